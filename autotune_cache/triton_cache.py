"""The one module that knows Triton's autotune disk cache: file names, JSON layout, how a lookup goes.

Layout (Triton 3.4+): <TRITON_CACHE_DIR>/<base32 sha256 of the key parts>/<kernel __name__[:150]>.autotune.json
holding {"key": [...], "configs_timings": [[config.__dict__, [p50, p20, p80]], ...]}; the winner is the config
with the smallest timings. Compiled kernels of every benchmarked config sit in sibling directories.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

AUTOTUNE_SUFFIX = ".autotune.json"


@dataclass(frozen=True)
class Lookup:
    """One disk-cache lookup made by an Autotuner on an in-memory miss."""
    kernel: str         # the innermost JITFunction's __name__
    key: tuple          # Triton's tuning key: key=[...] values then every tensor's dtype
    configs: int        # configs left after pruning (benchmarked on a miss)
    hit: bool           # True: read from disk, nothing benchmarked
    path: Path | None   # the autotune JSON (written on a miss, read on a hit)
    corrupt: str | None = None   # why the file on disk was unreadable (then treated as a miss)


def innermost_jit(fn):
    from triton.runtime.jit import JITFunction
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def live_autotuners() -> list:
    """Every Autotuner object alive in this process (imported kernel modules hold them)."""
    import gc
    import warnings

    from triton.runtime.autotuner import Autotuner
    with warnings.catch_warnings():  # isinstance() on deprecated torch module attributes warns
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if isinstance(o, Autotuner)]


def forget_in_memory() -> None:
    """Drop every autotuner's in-memory winners, so the next call of each key goes through the disk lookup
    (and is seen by listeners) even when an earlier unit of this process reached the same key."""
    for tuner in live_autotuners():
        tuner.cache.clear()


def autotune_file_name(kernel_name: str) -> str:
    return f"{kernel_name[:150]}{AUTOTUNE_SUFFIX}"


def invalidating_env_vars() -> dict[str, str]:
    """Triton's cache-invalidating env vars that are set (and non-empty) in this process."""
    try:
        from triton._C.libtriton import get_cache_invalidating_env_vars
    except ImportError:  # older layouts keep it in knobs
        from triton.knobs import get_cache_invalidating_env_vars  # type: ignore
    return dict(get_cache_invalidating_env_vars())


class _ValidatingManager:
    """Triton's cache manager, except that a corrupt autotune JSON reads as absent: Triton itself would raise
    (KeyError, JSONDecodeError) and fail the kernel call; as a miss it is re-tuned and rewritten."""

    def __init__(self, manager, seen):
        self._manager, self._seen = manager, seen

    def get_file(self, filename):
        path = self._manager.get_file(filename)
        if path and filename.endswith(AUTOTUNE_SUFFIX):
            try:
                read_autotune(Path(path))
            except (OSError, ValueError, TypeError) as e:
                self._seen["corrupt"] = f"{type(e).__name__}: {e}"
                return None
        return path

    def __getattr__(self, name):
        return getattr(self._manager, name)


_patch_lock = threading.Lock()
_listeners: list[Callable[[Lookup], None]] = []
# Called instead of benchmarking when set; may raise to forbid tuning (strict serving).
_on_miss: list[Callable[[object, tuple], None]] = []


def _install_hook() -> None:
    """Wrap Autotuner.check_disk_cache once per process so listeners see every disk lookup."""
    import triton.runtime.autotuner as at

    if getattr(at.Autotuner.check_disk_cache, "_autotune_cache_hook", False):
        return
    original = at.Autotuner.check_disk_cache

    def check_disk_cache(self, tuning_key, configs, bench_fn):
        seen = {}
        real_get_cache_manager = at.get_cache_manager

        def get_cache_manager(key):
            manager = real_get_cache_manager(key)
            seen["dir"] = manager.cache_dir
            return _ValidatingManager(manager, seen)

        def bench():
            seen["benchmarked"] = True
            for hook in list(_on_miss):
                hook(self, tuning_key)
            return bench_fn()

        # The autotuner resolves get_cache_manager from its module globals: swap it for this call only.
        at.get_cache_manager = get_cache_manager
        try:
            result = original(self, tuning_key, configs, bench)
        finally:
            at.get_cache_manager = real_get_cache_manager
        kernel = innermost_jit(self.fn).__name__
        path = Path(seen["dir"]) / autotune_file_name(kernel) if "dir" in seen else None
        lookup = Lookup(kernel=kernel, key=tuple(tuning_key), configs=len(configs),
                        hit=not seen.get("benchmarked", False), path=path, corrupt=seen.get("corrupt"))
        for listener in list(_listeners):
            listener(lookup)
        return result

    check_disk_cache._autotune_cache_hook = True
    at.Autotuner.check_disk_cache = check_disk_cache


@contextlib.contextmanager
def recording(listener: Callable[[Lookup], None]):
    """Call `listener(Lookup)` for every autotune disk lookup inside the block."""
    with _patch_lock:
        _install_hook()
        _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def add_listener(listener: Callable[[Lookup], None]) -> None:
    with _patch_lock:
        _install_hook()
        _listeners.append(listener)


def add_miss_hook(hook: Callable[[object, tuple], None]) -> None:
    with _patch_lock:
        _install_hook()
        _on_miss.append(hook)


@dataclass(frozen=True)
class AutotuneFile:
    """A parsed <kernel>.autotune.json."""
    key: tuple
    timings: tuple[tuple[dict, tuple[float, ...]], ...]   # (config.__dict__, (p50, p20, p80)) per config

    @property
    def winner(self) -> dict:
        return min(self.timings, key=lambda ct: ct[1])[0]

    @property
    def best(self) -> float:
        return min(t for _, t in self.timings)[0]

    @property
    def margin(self) -> float | None:
        """Runner-up time over best time, minus one (0.05 = the runner-up is 5% slower); None with one config."""
        ranked = sorted(t[0] for _, t in self.timings)
        return ranked[1] / ranked[0] - 1 if len(ranked) > 1 and ranked[0] > 0 else None


def read_autotune(path: Path) -> AutotuneFile:
    """Parse an autotune JSON; raises ValueError (or OSError) on a corrupt or unreadable file."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict) or "key" not in raw or not isinstance(raw.get("configs_timings"), list):
        raise ValueError("not a Triton autotune file (needs 'key' and 'configs_timings')")
    timings = []
    for item in raw["configs_timings"]:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], dict)):
            raise ValueError("malformed configs_timings entry")
        t = item[1] if isinstance(item[1], list) else [item[1]]
        timings.append((item[0], tuple(float(x) for x in t)))
    if not timings:
        raise ValueError("no configs_timings")
    return AutotuneFile(key=tuple(raw["key"]), timings=tuple(timings))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
