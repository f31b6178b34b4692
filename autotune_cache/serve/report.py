"""What install() did and what happened since: one LoaderReport per process, its counters live."""
from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..cache import trust

if TYPE_CHECKING:
    from ..autotuner.disk import Lookup
    from ..cache.manifest import Manifest


class LoaderReport:
    """What install() did and what happened since. Counters are live: read them at any time. `str(report)` is
    `summary()`, the lines the vLLM plugin logs at exit; `repr` one line: the dir, checked or not, the counts."""

    def __init__(self, cache_dir: Path, prefixes: tuple[str, ...], strict: bool) -> None:
        self.cache_dir = cache_dir
        self.prefixes = prefixes
        self.strict = strict
        self.manifest: Manifest | None = None
        self.read_only = False
        self.overlay_dir: Path | None = None   # where Triton writes misses when the cache dir itself is not written
        # Trust (cache/trust.py): verified = every file matches the manifest and only its owner can write the dir.
        # refused = why the dir is not used ("AB.../k.cubin: sha256 differs from the manifest"); the server then
        # tunes into private_dir, a fresh empty dir removed at exit.
        self.trust: trust.TrustReport | None = None
        self.verified = False
        self.refused: list[str] = []
        self.private_dir: Path | None = None
        # The private verified copy Triton reads instead of cache_dir (None: not copied: no manifest, refused, or
        # copy=False), and the seconds spent writing it (the reads are the check's own, in verify_seconds).
        self.copy_dir: Path | None = None
        self.copy_seconds = 0.0
        self.signed: bool | None = None        # manifest signature checked (None: no public key given)
        self.files_checked = 0                 # files hashed
        self.bytes_checked = 0
        self.verify_seconds = 0.0
        self.flipped: list[str] = []          # "module.kernel" of every autotuner switched to the disk cache
        self.mismatches: list[str] = []       # why the cache may miss here (fingerprint differences)
        # triton_key and ptxas not compared yet: install() leaves them to the first autotune lookup (loader.py)
        self.keys_deferred = False
        self.warnings: list[str] = []
        self.recording: list[str] = []        # record files this process appends its lookups to (record/)
        self.counters: defaultdict[str, dict[str, int]] = defaultdict(lambda: {"lookups": 0, "hits": 0, "misses": 0})
        self._lock = threading.Lock()

    def record(self, lookup: Lookup) -> None:
        with self._lock:
            c = self.counters[lookup.kernel]
            c["lookups"] += 1
            c["hits" if lookup.hit else "misses"] += 1

    @property
    def totals(self) -> dict[str, int]:
        return {k: sum(c[k] for c in self.counters.values()) for k in ("lookups", "hits", "misses")}

    def summary(self) -> str:
        t = self.totals
        where = (f" (REFUSED, tuning into {self.private_dir})" if self.private_dir else
                 f" ({'read-only, ' if self.read_only else ''}misses to overlay {self.overlay_dir})"
                 if self.overlay_dir else "")
        check = (f"verified {self.files_checked} files in {self.verify_seconds:.2f} s" if self.verified
                 else "refused" if self.refused else "unchecked (no manifest)")
        if self.copy_dir:
            check += f", served from a private copy {self.copy_dir} (written in {self.copy_seconds:.2f} s)"
        lines = [f"autotune-cache: {self.cache_dir}{where}: {check}; "
                 f"{t['lookups']} lookups, {t['hits']} hits, {t['misses']} misses (benchmarked)"]
        for kernel, c in sorted(self.counters.items()):
            lines.append(f"  {kernel}: lookups {c['lookups']} hits {c['hits']} misses {c['misses']}")
        lines += [f"  refused: {r}" for r in self.refused[:20]]
        lines += [f"  mismatch: {m}" for m in self.mismatches] + [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        t = self.totals
        state = ("refused" if self.refused else "verified" if self.verified else "unchecked")
        return (f"<LoaderReport {self.cache_dir}: {state}, {t['lookups']} lookups, {t['hits']} hits, "
                f"{t['misses']} misses>")

    def as_dict(self) -> dict:
        return {"cache_dir": str(self.cache_dir), "read_only": self.read_only,
                "overlay_dir": str(self.overlay_dir) if self.overlay_dir else None, "strict": self.strict,
                "flipped": self.flipped, "mismatches": self.mismatches, "keys_deferred": self.keys_deferred,
                "warnings": self.warnings,
                "verified": self.verified, "refused": self.refused,
                "private_dir": str(self.private_dir) if self.private_dir else None, "signed": self.signed,
                "files_checked": self.files_checked, "bytes_checked": self.bytes_checked,
                "verify_seconds": round(self.verify_seconds, 4),
                "copy_dir": str(self.copy_dir) if self.copy_dir else None, "copy_seconds": round(self.copy_seconds, 4),
                "counters": dict(self.counters), "totals": self.totals, "recording": self.recording}
