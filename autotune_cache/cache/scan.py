"""One read-only scan of a cache directory into frozen records: what `inspect` shows and what `verify`, `prune`
and `merge` start from. Works on a plain Triton cache dir (no manifest) too.

Like huggingface_hub's cache scan: a broken file never aborts the scan; it becomes a ScanWarning and the caller
decides. Nothing is hashed here (sizes only): checksums are `verify`'s job.

On-disk layout (FACTS.md §1): every entry of the root is `<base32 hash>/`, holding either one
`<kernel>.autotune.json` (a tuning result) or one compiled variant of a kernel (`__grp__<kernel>.json` listing
its .source/.ttir/.ttgir/.llir/.ptx/.cubin/.json by absolute path), or Triton's launcher/utils `.so`.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from ..errors import AutotuneCacheError, CacheDirError
from . import location
from . import manifest as manifest_mod
from .layout import (
    autotune_kernel,
    group_kernel,
    is_autotune_file,
    is_group_file,
    is_triton_tmp,
    read_autotune,
    read_group,
)
from .manifest import Manifest

# What a compiled-kernel dir is to the autotuned entries (decided from the manifest's recorded binaries):
ROLES = {
    "winner": "launched by an entry's winning config (or the one config of a key that pruned to one): the server "
              "loads it",
    "loser": "a benchmarked config that lost: the server never loads it (prune deletes it)",
    "unknown": "of an autotuned kernel whose winners' binaries were not recorded (no manifest, or an older one)",
    "untuned": "a kernel with no autotune entry here (not autotuned, or one config): kept",
}


@dataclass(frozen=True)
class ScanWarning:
    """A file the scan could not use. Example: ("AB.../l2norm_fwd_kernel.autotune.json", "corrupt: ...")."""
    path: str       # relative to the cache dir
    message: str


@dataclass(frozen=True)
class AutotuneRecord:
    """One `<hash dir>/<kernel>.autotune.json`. Example: kernel "l2norm_fwd_kernel", key (128, 4, "torch.bfloat16",
    "torch.bfloat16", "torch.float32"), fields {"D": 128, "NB": 4}, 25 configs, winner {"kwargs": {"BT": 8}, ...}."""
    file: str                      # relative: "<hash dir>/<kernel>.autotune.json"
    kernel: str                    # from the file name (Triton truncates it to 150 characters)
    key: tuple                     # Triton's tuning key as stored: key=[...] values, then dtypes
    fields: dict | None            # the key=[...] values by name when the kernel is known to a target, else None
    dtypes: tuple[str, ...]        # the rest of the key (dtype of every tensor argument); () when fields is None
    configs: int                   # configs benchmarked (timings stored)
    winner: dict                   # the winning config's __dict__
    best: float                    # winner's p50 in ms; meaningless for an emulated build
    margin: float | None           # runner-up / winner - 1; None with one config
    size: int                      # bytes of the JSON file
    in_manifest: bool              # listed in manifest.entries (False for a plain Triton cache)
    binaries: tuple[str, ...]      # the winner's compiled dirs recorded at build time; () = unknown

    @property
    def key_text(self) -> str:
        """'D=128 NB=4 | bf16x2,fp32' (runs of one dtype counted), or the raw tuple for a kernel no target
        describes."""
        if self.fields is None:
            return str(self.key)
        from itertools import groupby

        from ..targets import SHORT
        names = " ".join(f"{k}={v}" for k, v in self.fields.items())
        short = [SHORT.get(str(d).removeprefix("torch."), str(d)) for d in self.dtypes]
        dts = ",".join(d if n == 1 else f"{d}x{n}" for d, n in ((d, len(list(g))) for d, g in groupby(short)))
        return f"{names} | {dts}" if dts else names

    @property
    def winner_text(self) -> str:
        """'BT=8 warps=4 stages=3': the config's kwargs and the launch options that differ from Triton's defaults."""
        w = self.winner
        parts = [f"{k}={v}" for k, v in (w.get("kwargs") or {}).items()]
        parts += [f"{name}={w[opt]}" for opt, name in (("num_warps", "warps"), ("num_stages", "stages"),
                                                       ("num_ctas", "ctas"), ("maxnreg", "maxnreg"))
                  if w.get(opt) is not None and not (opt == "num_ctas" and w[opt] == 1)]
        return " ".join(parts)


@dataclass(frozen=True)
class CompiledRecord:
    """One compiled variant of a kernel: a `<hash dir>` with `__grp__<kernel>.json`. Example: kernel
    "chunk_fwd_kernel_o", 8 files, 420 KB, role "loser"."""
    dir: str                       # the hash dir, relative to the cache dir
    kernel: str
    size: int                      # bytes of every file in the dir
    files: int
    role: str                      # one of ROLES
    foreign: int                   # group members whose absolute path is not in this dir: after a move without
    #                                `import`, Triton finds them missing and recompiles the kernel


@dataclass(frozen=True)
class OtherRecord:
    """Anything else in a hash dir: Triton's launcher and cuda_utils .so (native code the process loads),
    leftovers of interrupted writes, files Triton does not know."""
    path: str
    size: int
    kind: str                      # "triton-native" (.so) | "triton-tmp" (interrupted write) | "unknown"


@dataclass(frozen=True)
class CacheScan:
    """The whole cache dir at one moment. Totals are derived properties; nothing is mutated after the scan."""
    root: Path
    manifest: Manifest | None
    autotune: tuple[AutotuneRecord, ...]
    compiled: tuple[CompiledRecord, ...]
    other: tuple[OtherRecord, ...]
    warnings: tuple[ScanWarning, ...]
    missing: tuple[str, ...]       # manifest entries whose autotune file is not on disk
    corrupt: tuple[str, ...] = field(default=())   # autotune or group files that Triton would fail on

    @property
    def kernels(self) -> list[str]:
        return sorted({r.kernel for r in self.autotune})

    @property
    def manifest_problem(self) -> str | None:
        """Why manifest.json is there but unusable ("manifest schema 99, this tool reads 1"); None when it is
        absent or was read. The rest of the scan then treats the dir as a plain Triton cache."""
        return next((w.message for w in self.warnings if w.path == manifest_mod.MANIFEST_NAME), None)

    @property
    def triton_files(self) -> bool:
        """Anything here in Triton's cache layout: an autotune file, a compiled kernel's group, Triton's launcher
        .so or a Triton write in flight. Without these and without a manifest a dir is no cache at all (a source
        tree, a home dir)."""
        return bool(self.autotune or self.compiled or self.corrupt
                    or any(o.kind != "unknown" for o in self.other))

    @property
    def unfinished(self) -> list[str]:
        """Ids of the manifest's units not done: pending (a build interrupted, or yet to run) or failed."""
        return [u.id for u in self.manifest.units.values() if u.status != "done"] if self.manifest else []

    @property
    def unlisted(self) -> list[AutotuneRecord]:
        """Autotune files on disk that the manifest does not list (all of them without a manifest)."""
        return [r for r in self.autotune if not r.in_manifest]

    @cached_property
    def _by_dir(self) -> dict[str, CompiledRecord]:
        return {c.dir: c for c in self.compiled}

    def binaries_of(self, record: AutotuneRecord) -> list[CompiledRecord]:
        """The winner's compiled dirs that are on disk (a recorded one may have been pruned with --all-binaries)."""
        return [self._by_dir[d] for d in record.binaries if d in self._by_dir]

    def bytes_of(self, role: str) -> int:
        return sum(c.size for c in self.compiled if c.role == role)

    @property
    def totals(self) -> dict:
        """Counts and bytes. 'winners' counts each compiled dir once even when several entries share it."""
        return {
            "entries": len(self.autotune), "kernels": len(self.kernels),
            "autotune_bytes": sum(r.size for r in self.autotune),
            "winner_binaries_bytes": self.bytes_of("winner"), "loser_binaries_bytes": self.bytes_of("loser"),
            "unknown_binaries_bytes": self.bytes_of("unknown"), "untuned_binaries_bytes": self.bytes_of("untuned"),
            "other_bytes": sum(o.size for o in self.other),
            "compiled_dirs": {role: sum(c.role == role for c in self.compiled) for role in ROLES},
            "entries_without_binaries": sum(1 for r in self.autotune if r.binaries and not self.binaries_of(r)),
            "entries_binaries_unknown": sum(1 for r in self.autotune if not r.binaries),
            "bytes": sum(r.size for r in self.autotune) + sum(c.size for c in self.compiled)
            + sum(o.size for o in self.other),
        }

    def as_dict(self) -> dict:
        m = self.manifest
        return {
            "cache_dir": str(self.root),
            "manifest": None if m is None else {
                "schema_version": m.schema_version, "tool_version": m.tool_version, "created": m.created,
                "updated": m.updated, "digest": m.digest(), "units": len(m.units), "entries": len(m.entries),
                "files": len(m.files), "pending": [u.id for u in m.pending], "failed": [u.id for u in m.failed]},
            "manifest_problem": self.manifest_problem,
            "fingerprint": None if m is None or m.fingerprint is None else m.fingerprint.model_dump(),
            "entries": [dict(asdict(r), key=list(r.key), dtypes=list(r.dtypes), binaries=list(r.binaries),
                             key_text=r.key_text, winner_text=r.winner_text) for r in self.autotune],
            "compiled": [asdict(c) for c in self.compiled],
            "other": [asdict(o) for o in self.other],
            "totals": self.totals,
            "unlisted": [r.file for r in self.unlisted],
            "missing": list(self.missing),
            "corrupt": list(self.corrupt),
            "warnings": [asdict(w) for w in self.warnings],
        }


# -- naming the key fields ------------------------------------------------------------------------------------
def _kernel_specs(manifest: Manifest | None) -> dict[str, list]:
    """name -> KernelSpecs that may describe it, best first: those of the targets the manifest's units name, then
    the registered targets (targets.registered()), whose kernels share names but not key fields (vLLM's
    chunk_fwd_kernel_o has no HV). Only planning code is imported, never the kernels."""
    from .. import targets
    named = sorted({u.target for u in manifest.units.values()}) if manifest else []
    specs: dict[str, list] = {}
    for name in named + [t for t in targets.names() if t not in named]:
        try:
            target = targets.get(name)
        except (AutotuneCacheError, ImportError):   # a test target not importable here: raw keys then
            continue
        for k in target.kernels:
            specs.setdefault(k.name, []).append(k)
    return specs


@lru_cache(maxsize=1)
def _any_shape():
    from ..shapes import RankShape
    return RankShape(tp=1, H=16, HV=32, K=128, V=128, dtype="bfloat16", state_dtype="float32")


def _name_key(kernel: str, key: tuple, specs: dict[str, list]) -> tuple[dict | None, tuple]:
    """The first spec whose key length fits names the fields; none fits (another kernel version): raw key."""
    for spec in specs.get(kernel, []):
        try:   # the names only: fields() of any shape has the same keys, in key order
            names = list(spec.fields(_any_shape(), 1))
        except Exception:  # noqa: BLE001 - a target's lambda we cannot call
            continue
        if len(key) == len(names) + len(spec.dtype_roles):
            return dict(zip(names, key[:len(names)], strict=True)), tuple(key[len(names):])
    return None, ()


# -- the scan -------------------------------------------------------------------------------------------------
def _files(d: Path, warnings: list, root: Path) -> list[tuple[os.DirEntry, int]]:
    out: list[tuple[os.DirEntry, int]] = []
    try:
        entries = sorted(os.scandir(d), key=lambda e: e.name)
    except OSError as e:
        warnings.append(ScanWarning(d.relative_to(root).as_posix(), f"unreadable directory ({e.strerror or e})"))
        return out
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as err:
            warnings.append(ScanWarning(Path(entry.path).relative_to(root).as_posix(), f"cannot stat ({err.strerror})"))
            continue
        out.append((entry, st.st_size))
    return out


def scan(cache_dir: str | os.PathLike) -> CacheScan:
    """Scan a cache dir. Raises CacheDirError only when it is not a readable directory at all."""
    root = location.normalize(cache_dir)
    if not root.is_dir():
        raise CacheDirError(f"{root}: no such cache directory" if not root.exists() else f"{root} is not a directory")
    warnings: list[ScanWarning] = []
    try:
        manifest = manifest_mod.load(root)
    except CacheDirError as e:   # a broken manifest: scan as a plain Triton cache and say why
        manifest = None
        warnings.append(ScanWarning(manifest_mod.MANIFEST_NAME, str(e).split(": ", 1)[-1]))
    specs = _kernel_specs(manifest)
    listed = manifest.entries if manifest else {}

    raw_autotune, groups, other, corrupt = [], [], [], []
    for top, _size in _files(root, warnings, root):
        name = top.name
        if manifest_mod.is_own(name):
            continue
        if top.is_symlink():
            warnings.append(ScanWarning(name, "symbolic link: not followed (a cache holds plain files)"))
            continue
        if not top.is_dir():
            other.append(OtherRecord(name, _size, "unknown"))
            continue
        files = _files(Path(top.path), warnings, root)
        group = next((f for f, _ in files if is_group_file(f.name) and f.is_file(follow_symlinks=False)), None)
        dir_bytes = 0
        for f, size in files:
            rel = f"{name}/{f.name}"
            if f.is_symlink():
                warnings.append(ScanWarning(rel, "symbolic link: not followed (a cache holds plain files)"))
            elif f.is_dir():
                kind = "triton-tmp" if is_triton_tmp(f.name) else "unknown"
                other.append(OtherRecord(rel, _tree_size(Path(f.path)), kind))
            elif is_autotune_file(f.name):
                raw_autotune.append((rel, autotune_kernel(f.name), size))
            elif group is not None:
                dir_bytes += size
            else:
                other.append(OtherRecord(rel, size, "triton-native" if f.name.endswith(".so") else "unknown"))
        if group is not None:
            groups.append((name, group, dir_bytes, sum(1 for f, _ in files if f.is_file(follow_symlinks=False))))

    autotune = []
    for rel, kernel, size in raw_autotune:
        try:
            parsed = read_autotune(root / rel)
        except (OSError, ValueError, TypeError) as e:
            warnings.append(ScanWarning(rel, f"corrupt or unreadable autotune file ({type(e).__name__}: {e}); "
                                             "Triton would fail the kernel call on it"))
            corrupt.append(rel)
            continue
        fields, dtypes = _name_key(kernel, parsed.key, specs)
        entry = listed.get(rel)
        autotune.append(AutotuneRecord(
            file=rel, kernel=kernel, key=parsed.key, fields=fields, dtypes=dtypes, configs=len(parsed.timings),
            winner=parsed.winner, best=parsed.best, margin=parsed.margin, size=size, in_manifest=entry is not None,
            binaries=tuple(entry.binaries) if entry else ()))
    autotune.sort(key=lambda r: (r.kernel, str(r.key)))

    # A compiled dir's role: winner if a manifest entry recorded it (or a key that pruned to one config launched it:
    # no entry on Triton 3.8+, manifest.PrunedKey); loser only if EVERY manifest entry of its kernel recorded its
    # winners (else we cannot tell, and unknown dirs are never deleted). Autotune files the manifest does not list
    # are stale to prune and deleted with the losers, so they do not make a kernel unknown.
    winners = {d for e in listed.values() for d in e.binaries}
    winners |= {d for u in (manifest.units.values() if manifest else ()) for p in u.pruned_to_one for d in p.binaries}
    tuned = {r.kernel for r in autotune} | {e.kernel for e in listed.values()}
    fully_known = {e.kernel for e in listed.values()} - {e.kernel for e in listed.values() if not e.binaries}
    compiled = []
    for name, group, size, nfiles in groups:
        kernel = group_kernel(group.name)
        foreign = 0
        try:
            for p in read_group(Path(group.path)).values():
                foreign += Path(p).parent != root / name
        except (OSError, ValueError, TypeError) as e:
            rel = f"{name}/{group.name}"
            warnings.append(ScanWarning(rel, f"corrupt group file ({type(e).__name__}: {e}); Triton would fail "
                                             "loading this kernel"))
            corrupt.append(rel)
        role = ("winner" if name in winners else "untuned" if kernel not in tuned
                else "loser" if kernel in fully_known else "unknown")
        compiled.append(CompiledRecord(dir=name, kernel=kernel, size=size, files=nfiles, role=role, foreign=foreign))

    on_disk = {r.file for r in autotune} | set(corrupt)
    missing = tuple(sorted(f for f in listed if f not in on_disk))
    for o in other:
        if o.kind == "triton-tmp":
            warnings.append(ScanWarning(o.path, "left by an interrupted Triton write (prune deletes it)"))
    return CacheScan(root=root, manifest=manifest, autotune=tuple(autotune), compiled=tuple(compiled),
                     other=tuple(other), warnings=tuple(warnings), missing=missing, corrupt=tuple(sorted(corrupt)))


def _tree_size(d: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(d):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def fingerprint_text(manifest: Manifest | None) -> str:
    """One line: what the cache was built with."""
    if manifest is None:
        return "unknown (no manifest)"
    if manifest.fingerprint is None:   # the ledger records it when the first child reports
        return "not recorded (the build stopped before its first build child started)"
    fp = manifest.fingerprint
    pkgs = ", ".join(f"{k} {v}" for k, v in fp.packages.items())
    env = ", ".join(f"{k}={v}" for k, v in fp.env.items()) or "none"
    return (f"triton {fp.triton} (python {fp.python}, triton_key {fp.triton_key_sha256[:12]}), torch {fp.torch}, "
            f"CUDA {fp.cuda}, {fp.gpu_name or 'GPU ?'} (sm {fp.capability}), ptxas {fp.ptxas}"
            + (f", {pkgs}" if pkgs else "") + f"\n  cache-invalidating env vars: {env}"
            + ("; EMULATED build (fake GPU, timings meaningless)" if fp.emulated else ""))

