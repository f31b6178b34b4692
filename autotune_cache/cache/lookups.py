"""Every autotune lookup of this process, as it happens: hooks on Triton's Autotuner (3.4-3.6) that the build
child, the selection rule, the loader and the serving probe listen to. The files themselves: layout.py."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .layout import autotune_file_name, is_autotune_file, read_autotune


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


class _ValidatingManager:
    """Triton's cache manager, except that a corrupt autotune JSON reads as absent: Triton itself would raise
    (KeyError, JSONDecodeError) and fail the kernel call; as a miss it is re-tuned and rewritten."""

    def __init__(self, manager, seen):
        self._manager, self._seen = manager, seen

    def get_file(self, filename):
        path = self._manager.get_file(filename)
        if path and is_autotune_file(filename):
            try:
                read_autotune(Path(path))
            except (OSError, ValueError, TypeError) as e:
                self._seen["corrupt"] = f"{type(e).__name__}: {e}"
                return None
        if path and is_autotune_file(filename):
            self._seen["path"] = path   # a layered manager may answer from another dir than cache_dir
        return path

    def put(self, data, filename, binary=True):
        if _dry and is_autotune_file(filename):
            return None   # a dry lookup (a probe pass) benchmarks but leaves no winner on disk
        return self._manager.put(data, filename, binary=binary)

    def __getattr__(self, name):
        return getattr(self._manager, name)


_patch_lock = threading.Lock()
_listeners: list[Callable[[Lookup], None]] = []
# Called before the disk is read, with the autotuner and its tuning key; may raise to fail the lookup, or point
# Triton elsewhere (the loader's checks deferred to the first lookup).
_before: list[Callable[[object, tuple], None]] = []
# Called instead of benchmarking when set; may raise to forbid tuning (strict serving).
_on_miss: list[Callable[[object, tuple], None]] = []
# Called after Triton benchmarked a miss and before it writes the file: may change the timings and the winner.
_after_bench: list[Callable[[object, tuple], None]] = []
# Wall time spent benchmarking misses in this process (hooks included): the build's floor, read by the child.
bench_seconds = 0.0
# Inside dry(): misses are benchmarked (and the bench hooks run) but no autotune file is written and listeners
# hear nothing: the build child's probe passes (selection.py).
_dry = False


def _install_hook() -> None:
    """Wrap Autotuner.check_disk_cache once per process so listeners see every disk lookup."""
    import triton.runtime.autotuner as at

    if getattr(at.Autotuner.check_disk_cache, "_autotune_cache_hook", False):
        return
    original = at.Autotuner.check_disk_cache

    def check_disk_cache(self, tuning_key, configs, bench_fn):
        for hook in list(_before):
            hook(self, tuning_key)
        seen = {}
        real_get_cache_manager = at.get_cache_manager

        def get_cache_manager(key):
            manager = real_get_cache_manager(key)
            seen["dir"] = manager.cache_dir
            return _ValidatingManager(manager, seen)

        def bench():
            global bench_seconds
            seen["benchmarked"] = True
            for hook in list(_on_miss):
                hook(self, tuning_key)
            start = time.perf_counter()
            try:
                result = bench_fn()
                for hook in list(_after_bench):
                    hook(self, tuning_key)
            finally:
                bench_seconds += time.perf_counter() - start
            return result

        # The autotuner resolves get_cache_manager from its module globals: swap it for this call only.
        at.get_cache_manager = get_cache_manager
        try:
            result = original(self, tuning_key, configs, bench)
        finally:
            at.get_cache_manager = real_get_cache_manager
        if _dry:
            return result
        kernel = innermost_jit(self.fn).__name__
        path = Path(seen["path"]) if "path" in seen else (
            Path(seen["dir"]) / autotune_file_name(kernel) if "dir" in seen else None)
        lookup = Lookup(kernel=kernel, key=tuple(tuning_key), configs=len(configs),
                        hit=not seen.get("benchmarked", False), path=path, corrupt=seen.get("corrupt"))
        for listener in list(_listeners):
            listener(lookup)
        return result

    check_disk_cache._autotune_cache_hook = True  # type: ignore[attr-defined]  # marks our wrapper: never wrapped twice
    at.Autotuner.check_disk_cache = check_disk_cache


@contextlib.contextmanager
def dry():
    """Autotune lookups inside the block benchmark a miss as usual (bench hooks included) but write no autotune
    file and reach no lookup listener: what a miss measured is the hooks' to keep."""
    global _dry
    with _patch_lock:
        _install_hook()
    previous, _dry = _dry, True
    try:
        yield
    finally:
        _dry = previous


def is_dry() -> bool:
    return _dry


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


def add_before_lookup_hook(hook: Callable[[object, tuple], None]) -> None:
    """Call `hook(autotuner, tuning_key)` before each disk lookup reads anything (dry ones included)."""
    with _patch_lock:
        _install_hook()
        _before.append(hook)


def add_miss_hook(hook: Callable[[object, tuple], None]) -> None:
    with _patch_lock:
        _install_hook()
        _on_miss.append(hook)


def add_bench_hook(hook: Callable[[object, tuple], None]) -> None:
    """Call `hook(autotuner, tuning_key)` after each benchmark of a miss, before Triton writes its file."""
    with _patch_lock:
        _install_hook()
        _after_bench.append(hook)


@dataclass(frozen=True)
class Launch:
    """One call of an autotuned kernel, after its Autotuner chose a config (from disk, a benchmark or memory).
    Its binaries are what `prune` must keep: the compiled variant the chosen (winning) config launched."""
    kernel: str                 # the innermost JITFunction's __name__
    key: tuple                  # the tuning key, as in Lookup
    binaries: tuple[Path, ...]  # compiled-kernel dirs of the launched variant; () when the call raised


_launch_listeners: list[Callable[[Launch], None]] = []


def tuning_key(tuner, args, kwargs) -> tuple:
    """The tuning key Autotuner.run forms for this call (Triton 3.4-3.6): `key=[...]` values, then the dtype of
    every argument that has one."""
    named = {k: v for k, v in {**dict(zip(tuner.arg_names, args, strict=False)), **kwargs}.items()
             if k in tuner.arg_names}
    return tuple([named[k] for k in tuner.keys if k in named]
                 + [str(v.dtype) for v in named.values() if hasattr(v, "dtype")])


def compiled_dirs(kernel) -> tuple[Path, ...]:
    """Cache dirs holding a CompiledKernel's files. Read from its metadata_group (the absolute paths it was
    loaded from) rather than recomputed from `.hash`: right whichever cache manager answered, and it works
    for a kernel launched from the in-memory JIT cache too."""
    group = getattr(kernel, "metadata_group", None)
    if not isinstance(group, dict):
        return ()
    return tuple(sorted({Path(p).parent for p in group.values()}))


def _launched(tuner, args, kwargs, kernel) -> None:
    if not _launch_listeners or len(tuner.configs) <= 1:   # one config: no key, nothing cached on disk
        return
    try:
        key = tuning_key(tuner, args, kwargs)
    except Exception:   # noqa: BLE001 - bad arguments: Triton itself raised already or will
        return
    launch = Launch(kernel=innermost_jit(tuner.fn).__name__, key=key, binaries=compiled_dirs(kernel))
    for listener in list(_launch_listeners):
        listener(launch)


def _install_run_hook() -> None:
    """Wrap Autotuner.run once per process: its return value is the launched CompiledKernel (Triton 3.x
    returns `self.fn.run(...)`), the only place that tells which binaries the winner uses."""
    import triton.runtime.autotuner as at

    if getattr(at.Autotuner.run, "_autotune_cache_hook", False):
        return
    original = at.Autotuner.run

    def run(self, *args, **kwargs):
        try:
            kernel = original(self, *args, **kwargs)
        except BaseException:
            _launched(self, args, kwargs, None)   # the lookup before the failure still happened
            raise
        _launched(self, args, kwargs, kernel)
        return kernel

    run._autotune_cache_hook = True  # type: ignore[attr-defined]  # marks our wrapper: never wrapped twice
    at.Autotuner.run = run


def add_launch_listener(listener: Callable[[Launch], None]) -> None:
    """Call `listener(Launch)` after every call of an autotuned kernel (with more than one config)."""
    with _patch_lock:
        _install_run_hook()
        _launch_listeners.append(listener)


def remove_launch_listener(listener: Callable[[Launch], None]) -> None:
    with _patch_lock:
        if listener in _launch_listeners:
            _launch_listeners.remove(listener)
