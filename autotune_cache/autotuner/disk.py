"""Every autotune disk lookup of this process as it happens, told to whoever listens: the build child's report, the
selection rule, the recorder, the loader's counters and strict mode, the serving stand-in. The files: cache/layout.py.

A lookup is watched through the cache manager Triton's autotuner asks for. The autotuner resolves
`get_cache_manager` from its own module globals at each lookup, and has no other way in (TRITON_CACHE_MANAGER is one
class for the whole process, and the loader's); so that global is replaced once per process by a wrapper that
wraps the manager only for the thread whose lookup is being watched (a thread-local), never swapped per call. The
same wrapper lets one thread's lookups read another cache dir (`reading`: scripts/_kernel_timing.py reads each
cache's winner with Triton's own lookup, read-only).

A key whose configs prune to one reaches no lookup on Triton 3.8+ (versions.prunes_to_one_skip_disk): Triton keeps
that config without a lookup, a benchmark or a file, so no lookup listener hears of it. `add_pruned_listener` tells
of each such key instead (`PrunedToOne`), and `skips_lookup(pruned)` answers it for a pruned list: the one place the
rooms learn it (the build child reports the key reached without an entry, the recorder records no lookup for it).
On 3.6 the same key is looked up like any other: a Lookup with configs=1, and no PrunedToOne.

Dry lookups (`dry()`: the build child's probe passes) benchmark a miss as usual, write no autotune file and tell
no listener. A found autotune file that Triton cannot read (truncated, not JSON, another schema) would fail the
kernel call: it is read as absent instead, so the key is tuned again and the file rewritten.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hooks, versions
from .kernels import compiled_dirs, innermost_jit, live_autotuners
from .keys import tuning_key


@dataclass(frozen=True)
class Lookup:
    """One disk-cache lookup made by an Autotuner on an in-memory miss."""
    kernel: str         # the innermost JITFunction's __name__
    key: tuple          # Triton's tuning key: key=[...] values then every tensor's dtype
    configs: int        # configs left after pruning (benchmarked on a miss)
    hit: bool           # True: read from disk, nothing benchmarked
    path: Path | None   # the autotune JSON (written on a miss, read on a hit)
    corrupt: str | None = None   # why Triton could not read the file on disk (then treated as a miss)


@dataclass(frozen=True)
class Launch:
    """One call of an autotuned kernel, after its Autotuner chose a config (from disk, a benchmark or memory).
    Its binaries are what `prune` must keep: the compiled variant the chosen (winning) config launched."""
    kernel: str                 # the innermost JITFunction's __name__
    key: tuple                  # the tuning key, as in Lookup
    binaries: tuple[Path, ...]  # compiled-kernel dirs of the launched variant; () when the call raised


@dataclass(frozen=True)
class PrunedToOne:
    """A key whose configs pruned to one on a Triton that then looks nothing up (Triton 3.8+: skips_lookup): no
    disk lookup, no benchmark, no autotune file; the one config is launched. Told before the launch."""
    kernel: str         # the innermost JITFunction's __name__
    key: tuple          # the tuning key, as in Lookup


# Wall time spent benchmarking misses in this process (hooks included): the build's floor, read by the child.
bench_seconds = 0.0
_dry = False           # inside dry(): process-wide, as the child's probe pass is
_local = threading.local()   # .watch: the _Watch of the lookup this thread is making, if any;
                             # .reading: the manager factory of this thread's reading() block, if any


class _Watch:
    """What one check_disk_cache call did with its cache manager."""

    def __init__(self) -> None:
        self.dir: str | None = None     # the manager's dir (where a miss is written)
        self.name: str | None = None    # the autotune file's name Triton asked for
        self.found: str | None = None   # the path get_file answered (a layered manager: maybe another dir)
        self.absent = False             # read the found file as absent: Triton could not read it
        self.corrupt: str | None = None
        self.benchmarked = False


class _Watched:
    """Triton's cache manager for one watched lookup; the autotuner uses it for its autotune file only."""

    def __init__(self, manager: Any, watch: _Watch) -> None:
        self._manager, self._watch = manager, watch

    def get_file(self, filename: str) -> str | None:
        self._watch.name = filename
        if self._watch.absent:
            return None
        path = self._manager.get_file(filename)
        self._watch.found = path or None
        return path

    def put(self, data: Any, filename: str, binary: bool = True) -> Any:
        if _dry:
            return None   # a dry lookup (a probe pass) benchmarks but leaves no winner on disk
        return self._manager.put(data, filename, binary=binary)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)


def _watching(get_cache_manager: Callable) -> Callable:
    def watched(key: str, *args: Any, **kwargs: Any) -> Any:
        reading = getattr(_local, "reading", None)
        manager = reading(key) if reading is not None else get_cache_manager(key, *args, **kwargs)
        watch = getattr(_local, "watch", None)
        if watch is None:   # another thread's lookup, or none: Triton's manager as it is
            return manager
        watch.dir = getattr(manager, "cache_dir", None)
        return _Watched(manager, watch)
    return watched


def _lookup(call: Callable, tuner: Any, tuning_key: Any, configs: list, bench_fn: Callable) -> Any:
    """Around Autotuner.check_disk_cache: fire before, watch the lookup, fire miss and benched around a benchmark,
    then lookup."""
    hooks.fire("before", tuner, tuning_key)
    watch = _Watch()

    def bench() -> Any:
        global bench_seconds
        watch.benchmarked = True
        hooks.fire("miss", tuner, tuning_key)
        start = time.perf_counter()
        try:
            result = bench_fn()
            hooks.fire("benched", tuner, tuning_key)
        finally:
            bench_seconds += time.perf_counter() - start
        return result

    outer, _local.watch = getattr(_local, "watch", None), watch
    try:
        try:
            result = call(tuner, tuning_key, configs, bench)
        except Exception as e:
            if watch.found is None or watch.benchmarked:
                raise
            # Only Triton's read of the found file runs between get_file and the benchmark: that read failed.
            watch.corrupt, watch.absent, watch.found = f"{type(e).__name__}: {e}", True, None
            result = call(tuner, tuning_key, configs, bench)
    finally:
        _local.watch = outer
    if _dry:
        return result
    path = (Path(watch.found) if watch.found else
            Path(watch.dir) / watch.name if watch.dir and watch.name else None)
    lookup = Lookup(kernel=innermost_jit(tuner.fn).__name__, key=tuple(tuning_key), configs=len(configs),
                    hit=not watch.benchmarked, path=path, corrupt=watch.corrupt)
    hooks.fire("lookup", lookup)
    return result


def _watch_managers() -> None:
    hooks.wrap_global("triton.runtime.autotuner", "get_cache_manager", _watching)


def _watch_lookups() -> None:
    _watch_managers()
    hooks.add("lookups", "check_disk_cache", _lookup)


def skips_lookup(pruned: list) -> bool:
    """Whether Autotuner.run keeps `pruned` (what prune_configs returned for a call) without a disk lookup or a
    benchmark: one config left, on a Triton that skips the disk for it (versions.prunes_to_one_skip_disk: 3.8+)."""
    return len(pruned) == 1 and versions.prunes_to_one_skip_disk()


def _prune(call: Callable, tuner: Any, kwargs: dict) -> Any:
    """Around Autotuner.prune_configs (outside every other room's hook on it, hooks.PHASES): a call of run() whose
    configs pruned to one that Triton will not look up fires `pruned`. Not Autotuner.warmup's pruning (no `warmup`
    False in its kwargs), nor a dry pass's."""
    pruned = call(tuner, kwargs)
    if (not _dry and kwargs.get("warmup") is False and tuner.nargs is not None and hooks.listened("pruned")
            and skips_lookup(pruned)):
        key = tuning_key(tuner, tuple(tuner.nargs.values()), kwargs)
        hooks.fire("pruned", PrunedToOne(kernel=innermost_jit(tuner.fn).__name__, key=key))
    return pruned


def _run(call: Callable, tuner: Any, *args: Any, **kwargs: Any) -> Any:
    """Around Autotuner.run: its return value is the launched CompiledKernel (Triton 3.x returns
    `self.fn.run(...)`), the only place that tells which binaries the winner uses."""
    try:
        kernel = call(tuner, *args, **kwargs)
    except BaseException:
        _launched(tuner, args, kwargs, None)   # the lookup before the failure still happened
        raise
    _launched(tuner, args, kwargs, kernel)
    return kernel


def _launched(tuner: Any, args: tuple, kwargs: dict, kernel: Any) -> None:
    if not hooks.listened("launch") or len(tuner.configs) <= 1:   # one config: no key, nothing cached on disk
        return
    try:
        key = tuning_key(tuner, args, kwargs)
    except Exception:   # noqa: BLE001 - bad arguments: Triton itself raised already or will
        return
    hooks.fire("launch", Launch(kernel=innermost_jit(tuner.fn).__name__, key=key, binaries=compiled_dirs(kernel)))


def add_listener(listener: Callable[[Lookup], None], phase: str = "listen") -> None:
    """Call `listener(Lookup)` after every autotune disk lookup (in `phase`'s place: hooks.PHASES)."""
    _watch_lookups()
    hooks.add(phase, "lookup", listener)


def remove_listener(listener: Callable[[Lookup], None], phase: str = "listen") -> None:
    hooks.remove(phase, "lookup", listener)


@contextlib.contextmanager
def listening(listener: Callable[[Lookup], None], phase: str = "listen") -> Iterator[None]:
    """add_listener for the block."""
    add_listener(listener, phase)
    try:
        yield
    finally:
        remove_listener(listener, phase)


def add_pruned_listener(listener: Callable[[PrunedToOne], None], phase: str = "listen") -> None:
    """Call `listener(PrunedToOne)` for each key of a call whose configs pruned to one where Triton then looks
    nothing up (3.8+; never on 3.6, where that key is a Lookup): what no lookup listener hears of."""
    hooks.add("lookups", "prune_configs", _prune)
    hooks.add(phase, "pruned", listener)


def add_before_lookup_hook(hook: Callable[[Any, tuple], None], phase: str) -> None:
    """Call `hook(autotuner, tuning_key)` before each disk lookup reads anything (dry ones included): it may raise
    to fail the lookup (a strict loader's deferred fingerprint check)."""
    _watch_lookups()
    hooks.add(phase, "before", hook)


def add_miss_hook(hook: Callable[[Any, tuple], None], phase: str) -> None:
    """Call `hook(autotuner, tuning_key)` on each disk miss, before Triton benchmarks it; it may raise to forbid
    tuning (a strict server)."""
    _watch_lookups()
    hooks.add(phase, "miss", hook)


def add_bench_hook(hook: Callable[[Any, tuple], None], phase: str) -> None:
    """Call `hook(autotuner, tuning_key)` after each benchmark of a miss, before Triton writes its file: it may
    change the timings and the winner."""
    _watch_lookups()
    hooks.add(phase, "benched", hook)


def add_launch_listener(listener: Callable[[Launch], None], phase: str = "listen") -> None:
    """Call `listener(Launch)` after every call of an autotuned kernel (with more than one config)."""
    hooks.add("lookups", "run", _run)
    hooks.add(phase, "launch", listener)


@contextlib.contextmanager
def dry() -> Iterator[None]:
    """Autotune lookups inside the block benchmark a miss as usual (bench hooks included) but write no autotune
    file and reach no lookup listener: what a miss measured is the hooks' to keep."""
    global _dry
    _watch_lookups()
    previous, _dry = _dry, True
    try:
        yield
    finally:
        _dry = previous


@contextlib.contextmanager
def reading(manager: Callable[[str], Any]) -> Iterator[None]:
    """Inside the block, the autotune lookups of this thread take their cache manager from `manager(key)` instead
    of Triton's get_cache_manager (`key`: the lookup's sha256 hex digest, as Triton hands it): another cache dir's,
    say, that never writes. Other threads' lookups, and Triton's compiles, keep theirs: through the one wrapped
    get_cache_manager and a thread-local, never a swapped global. Nests; watched lookups watch it as any other."""
    _watch_managers()
    outer, _local.reading = getattr(_local, "reading", None), manager
    try:
        yield
    finally:
        _local.reading = outer


def is_dry() -> bool:
    return _dry


def forget_in_memory() -> None:
    """Drop every autotuner's in-memory winners, so the next call of each key goes through the disk lookup
    (and is seen by listeners) even when an earlier unit of this process reached the same key."""
    for tuner in live_autotuners():
        tuner.cache.clear()


def interpreting() -> bool:
    """Under Triton's interpreter no Autotuner uses the disk cache (TRITON_INTERPRET; knobs.runtime)."""
    from triton import knobs
    return bool(getattr(knobs.runtime, "interpret", False))
