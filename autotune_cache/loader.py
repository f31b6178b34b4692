"""Serving side: point Triton at a baked cache, make the target autotuners use it, check it, count hits.

    import autotune_cache
    report = autotune_cache.install("/srv/gdn-cache")       # or AUTOTUNE_CACHE_DIR
    ... serve ...
    print(report.summary())

install() imports no kernel module and initializes no GPU (vLLM loads plugins before device init): autotuners
already imported are flipped now, later ones as they are constructed. Checks that need the GPU (ptxas, compute
capability) run at the first autotune lookup, when the server has initialized CUDA itself.
"""
from __future__ import annotations

import atexit
import logging
import os
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

from . import manifest as manifest_mod
from .errors import AutotuneCacheError, CacheDirError

log = logging.getLogger("autotune_cache")

TARGET_MODULES = {
    "fla": ("fla.",),
    "vllm": ("vllm.model_executor.layers.fla.", "vllm.third_party.flash_linear_attention."),
    "sglang": ("sglang.srt.layers.attention.fla.", "sglang.kernels.ops.attention.fla."),
}
TRUE = ("1", "true", "yes", "on")


class CacheMissError(AutotuneCacheError):
    """Strict mode: a kernel would have been benchmarked in the server."""


class IncompatibleCacheError(AutotuneCacheError):
    """Strict mode: the cache was built in an environment whose disk keys differ from this one."""


class LoaderReport:
    """What install() did and what happened since. Counters are live: read them at any time."""

    def __init__(self, cache_dir: Path, prefixes: tuple[str, ...], strict: bool):
        self.cache_dir = cache_dir
        self.prefixes = prefixes
        self.strict = strict
        self.manifest = None
        self.read_only = False
        self.overlay_dir: Path | None = None
        self.flipped: list[str] = []          # "module.kernel" of every autotuner switched to the disk cache
        self.mismatches: list[str] = []       # why the cache may miss here (fingerprint differences)
        self.warnings: list[str] = []
        self.counters = defaultdict(lambda: {"lookups": 0, "hits": 0, "misses": 0})
        self._lock = threading.Lock()

    def record(self, lookup) -> None:
        with self._lock:
            c = self.counters[lookup.kernel]
            c["lookups"] += 1
            c["hits" if lookup.hit else "misses"] += 1

    @property
    def totals(self) -> dict:
        return {k: sum(c[k] for c in self.counters.values()) for k in ("lookups", "hits", "misses")}

    def summary(self) -> str:
        t = self.totals
        lines = [f"autotune-cache: {self.cache_dir}{' (read-only, overlay ' + str(self.overlay_dir) + ')' if self.read_only else ''}: "
                 f"{t['lookups']} lookups, {t['hits']} hits, {t['misses']} misses (benchmarked)"]
        for kernel, c in sorted(self.counters.items()):
            lines.append(f"  {kernel}: lookups {c['lookups']} hits {c['hits']} misses {c['misses']}")
        lines += [f"  mismatch: {m}" for m in self.mismatches] + [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"cache_dir": str(self.cache_dir), "read_only": self.read_only,
                "overlay_dir": str(self.overlay_dir) if self.overlay_dir else None, "strict": self.strict,
                "flipped": self.flipped, "mismatches": self.mismatches, "warnings": self.warnings,
                "counters": dict(self.counters), "totals": self.totals}


_state: dict = {}   # the one installed report of this process


def _matches(tuner, prefixes) -> bool:
    """A prefix "fla." names a module tree; one without a trailing dot names a module and its submodules."""
    from .triton_cache import innermost_jit
    module = innermost_jit(tuner.fn).__module__ or ""
    return any(module.startswith(p) if p.endswith(".") else (module == p or module.startswith(p + "."))
               for p in prefixes)


def _flip(tuner, report: LoaderReport) -> None:
    from triton import knobs

    from .triton_cache import innermost_jit
    if getattr(knobs.runtime, "interpret", False):
        return  # Triton never uses the disk cache under the interpreter
    tuner.cache_results = True
    fn = innermost_jit(tuner.fn)
    report.flipped.append(f"{fn.__module__}.{fn.__name__}")


def _hook_new_autotuners(report: LoaderReport) -> None:
    """Autotuners constructed from now on (modules imported later) get cache_results on as well."""
    import triton.runtime.autotuner as at

    original = at.Autotuner.__init__
    if getattr(original, "_autotune_cache_hook", False):
        return

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        current = _state.get("report")
        if current is not None and _matches(self, current.prefixes):
            _flip(self, current)

    __init__._autotune_cache_hook = True
    at.Autotuner.__init__ = __init__


def _writable(path: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test."):
            return True
    except OSError:
        return False


def _point_triton_at(report: LoaderReport) -> None:
    # TRITON_CACHE_AUTOTUNING is left alone: it would switch every autotuner of the process, not the targets'.
    if _writable(report.cache_dir):
        os.environ["TRITON_CACHE_DIR"] = str(report.cache_dir)
        return
    if os.environ.get("TRITON_CACHE_MANAGER"):
        report.warnings.append(f"cache dir is read-only and TRITON_CACHE_MANAGER is already "
                               f"{os.environ['TRITON_CACHE_MANAGER']}: a miss will fail the kernel call")
        os.environ["TRITON_CACHE_DIR"] = str(report.cache_dir)
        return
    overlay = Path(os.environ.get("AUTOTUNE_CACHE_OVERLAY")
                   or Path(tempfile.gettempdir()) / f"autotune-cache-overlay-{os.getuid()}")
    overlay.mkdir(parents=True, exist_ok=True)
    report.read_only, report.overlay_dir = True, overlay
    os.environ["AUTOTUNE_CACHE_BASE"] = str(report.cache_dir)
    os.environ["TRITON_CACHE_DIR"] = str(overlay)
    os.environ["TRITON_CACHE_MANAGER"] = "autotune_cache.layered:LayeredCacheManager"


def _check_fingerprint(report: LoaderReport, with_gpu: bool) -> None:
    """Compare what enters the disk keys. Without the GPU (install time) only the parts that need none."""
    from . import fingerprint
    built = report.manifest.fingerprint if report.manifest else None
    if built is None:
        return
    here = fingerprint.collect(emulated=built.emulated) if with_gpu else fingerprint.collect_without_gpu(built)
    found = [m for m in fingerprint.mismatches(built, here) if m not in report.mismatches]
    report.mismatches += found
    for m in found:
        log.warning("autotune-cache: %s may miss here: %s", report.cache_dir, m)
    if found and report.strict:
        raise IncompatibleCacheError(f"cache {report.cache_dir} does not fit this environment: " + "; ".join(found))


def install(cache_dir: str | os.PathLike | None = None, *, targets=("fla", "vllm", "sglang"), strict: bool | None = None,
            modules=(), log_at_exit: bool | None = None) -> LoaderReport:
    """Make the target kernels' autotuners read (and never re-tune) the cache in `cache_dir`.

    cache_dir defaults to env AUTOTUNE_CACHE_DIR; strict to env AUTOTUNE_CACHE_STRICT (a miss then raises
    CacheMissError naming kernel and key instead of benchmarking, and an incompatible fingerprint raises).
    `modules`: extra module prefixes whose autotuners are switched too. Returns the live report.
    """
    cache_dir = cache_dir or os.environ.get("AUTOTUNE_CACHE_DIR")
    if not cache_dir:
        raise CacheDirError("no cache dir: pass one or set AUTOTUNE_CACHE_DIR")
    root = Path(cache_dir).expanduser().resolve()
    if not root.is_dir():
        raise CacheDirError(f"cache dir {root} does not exist or is not a directory")
    if strict is None:
        strict = os.environ.get("AUTOTUNE_CACHE_STRICT", "").lower() in TRUE
    unknown = [t for t in targets if t not in TARGET_MODULES]
    if unknown:
        raise AutotuneCacheError(f"unknown target(s) {unknown}; known: {', '.join(TARGET_MODULES)}")
    prefixes = tuple(p for t in targets for p in TARGET_MODULES[t]) + tuple(modules)
    report = LoaderReport(root, prefixes, strict)
    try:
        report.manifest = manifest_mod.load(root)
    except CacheDirError as e:   # a broken manifest must not stop a server: the Triton entries may still hit
        report.warnings.append(str(e))
    if report.manifest is None and not report.warnings:
        report.warnings.append("no manifest.json: not built by autotune-cache; compatibility unchecked")

    _point_triton_at(report)
    from . import triton_cache
    _state["report"] = report
    _hook_new_autotuners(report)
    for tuner in triton_cache.live_autotuners():
        if _matches(tuner, prefixes):
            _flip(tuner, report)
    _check_fingerprint(report, with_gpu=False)

    checked_gpu = threading.Event()

    def on_lookup(lookup):
        if _state.get("report") is not report:
            return
        if not checked_gpu.is_set():
            checked_gpu.set()
            _check_fingerprint(report, with_gpu=True)
        report.record(lookup)

    def on_miss(tuner, key):
        if _state.get("report") is report and report.strict:
            from .triton_cache import Lookup, innermost_jit
            kernel = innermost_jit(tuner.fn).__name__
            report.record(Lookup(kernel=kernel, key=tuple(key), configs=len(tuner.configs), hit=False, path=None))
            raise CacheMissError(f"autotune-cache strict mode: {kernel} would be "
                                 f"benchmarked for key {tuple(key)}: it is not in {report.cache_dir}")

    triton_cache.add_listener(on_lookup)
    triton_cache.add_miss_hook(on_miss)
    if log_at_exit or (log_at_exit is None and os.environ.get("AUTOTUNE_CACHE_LOG", "").lower() in TRUE):
        atexit.register(lambda: log.warning("%s", report.summary()))
    return report


def report() -> LoaderReport | None:
    """The report of the install() of this process, if any."""
    return _state.get("report")
