"""Record the autotune lookups of this process: one line per distinct (kernel, key) any Autotuner looked up.

    from autotune_cache import record
    record.start("lookups.jsonl")                # or AUTOTUNE_CACHE_RECORD, or install(record=...)
    record.start("misses.jsonl", misses=True)    # only what was not on disk (a server's misses)

The hook is on `Autotuner.prune_configs`, which Triton calls only on an in-memory miss, right before the disk
lookup or the benchmark: a key seen before in this process costs nothing more than Triton's own dict lookup. The
outcome (hit or miss) and the autotune file come from the disk lookup (autotuner/disk.py) just after; an
Autotuner without the disk cache always misses. A key whose configs prune to one is no lookup on Triton 3.8+
(disk.skips_lookup: Triton keeps the one config, benchmarks nothing, writes nothing): it is not recorded, so no
record asks a build for it; on 3.6 it is a lookup like any other. Recording never fails a kernel call: a call it
cannot describe is written with an opaque argument, a write that fails is counted and logged once.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
from pathlib import Path

from .. import settings
from ..autotuner import disk, hooks
from ..autotuner.keys import tuning_key
from . import store
from .schema import Record

log = logging.getLogger("autotune_cache")
RECORD_ENV = "AUTOTUNE_CACHE_RECORD"
MISSES_ENV = "AUTOTUNE_CACHE_MISSES"


class Recorder:
    """Appends this process's lookups to `path`: every one, or with `misses` only those not found on disk."""

    def __init__(self, path: Path, misses: bool = False):
        self.path, self.misses = path, misses
        self.written = 0
        self.failed = 0        # writes that raised (disk full, file removed...): logged once
        self.seen: set = set()   # (id(autotuner), key) described already

    def write(self, record: Record) -> None:
        if self.misses and record.outcome == "hit":
            return
        try:
            store.append(self.path, record)
            self.written += 1
        except OSError as e:
            self.failed += 1
            if self.failed == 1:
                log.warning("autotune-cache: cannot append to the record %s (%s); lookups are not recorded",
                            self.path, e)


_lock = threading.Lock()
_recorders: list[Recorder] = []
_pending: dict[int, tuple[int, tuple, Record]] = {}   # thread -> (id(autotuner), key, record) awaiting its outcome
_kernel_ids: dict[int, object] = {}                   # id(autotuner) -> KernelId (the source hashed once)
_installed = False   # the hooks and the exit flush, once per process


def _triton_version() -> str | None:
    try:
        import triton
        return triton.__version__
    except Exception:  # noqa: BLE001
        return None


def _describe(tuner, kwargs, pruned, key) -> Record:
    from . import describe
    ident = _kernel_ids.get(id(tuner))
    if ident is None:
        ident = _kernel_ids[id(tuner)] = describe.kernel_id(tuner)
    return Record(kernel=ident, key=tuple(describe._scalar(k)[1] if describe._scalar(k)[0] else str(k) for k in key),
                  configs=len(pruned), pruned_sha256=describe.configs_sha256(pruned),
                  call=describe.call(tuner, dict(tuner.nargs or {}), kwargs, pruned),
                  disk_cache=bool(tuner.cache_results), pid=os.getpid(), triton=_triton_version())


def _emit(record: Record) -> None:
    for r in list(_recorders):
        r.write(record)


def _flush(thread: int) -> None:
    """A lookup whose outcome never came (its benchmark raised: a strict server's refused miss): written as is."""
    pending = _pending.pop(thread, None)
    if pending is not None:
        _emit(pending[2])


def _flush_all() -> None:
    """At exit: every lookup still waiting for its outcome."""
    for thread in list(_pending):
        _flush(thread)


def _on_prune(tuner, kwargs, pruned) -> None:
    if kwargs.get("warmup") is not False or tuner.nargs is None or disk.is_dry():
        return   # Autotuner.warmup (compiles, looks nothing up), or a build child's probe pass
    if disk.skips_lookup(pruned):
        return   # Triton 3.8+ keeps the one config left: no lookup, nothing to tune or build
    key = tuning_key(tuner, tuple(tuner.nargs.values()), kwargs)
    thread = threading.get_ident()
    _flush(thread)
    with _lock:
        if all((id(tuner), key) in r.seen for r in _recorders):
            return
        for r in _recorders:
            r.seen.add((id(tuner), key))
    record = _describe(tuner, kwargs, pruned, key)
    if not tuner.cache_results:   # no disk lookup follows: the benchmark runs in this process
        _emit(record.model_copy(update={"outcome": "miss"}))
    else:
        _pending[thread] = (id(tuner), key, record)


def _on_miss(tuner, key) -> None:
    pending = _pending.get(threading.get_ident())
    if pending is not None and pending[0] == id(tuner) and pending[1] == tuple(key):
        _pending[threading.get_ident()] = (*pending[:2], pending[2].model_copy(update={"outcome": "miss"}))


def _on_lookup(lookup) -> None:
    pending = _pending.get(threading.get_ident())
    if pending is None or pending[2].kernel.name != lookup.kernel or pending[1] != tuple(lookup.key):
        return
    del _pending[threading.get_ident()]
    file = None
    if lookup.path is not None:
        file = f"{lookup.path.parent.name}/{lookup.path.name}"
    _emit(pending[2].model_copy(update={"outcome": "hit" if lookup.hit else "miss", "file": file}))


def _prune_configs(call, tuner, kwargs):
    pruned = call(tuner, kwargs)
    if _recorders:
        try:
            _on_prune(tuner, kwargs, pruned)
        except Exception as e:  # noqa: BLE001 - recording must never fail the kernel call
            log.warning("autotune-cache: a lookup of %s was not recorded: %s: %s",
                        getattr(tuner.base_fn, "__name__", "?"), type(e).__name__, e)
    return pruned


def _install_hooks() -> None:
    global _installed
    if _installed:
        return
    hooks.add("record", "prune_configs", _prune_configs)
    disk.add_miss_hook(_on_miss, phase="record")   # before a strict loader's, which raises (hooks.PHASES)
    disk.add_listener(_on_lookup, phase="record")
    atexit.register(_flush_all)
    _installed = True


def start(path: str | os.PathLike, *, misses: bool = False) -> Recorder:
    """Record this process's autotune lookups into `path` (appended; see the module doc). RecordError where the
    file cannot be written. Autotuners already imported and those imported later are all recorded."""
    path = store.open_for_append(path)
    with _lock:
        for r in _recorders:
            if r.path == path and r.misses == misses:   # the env's (boot) and install()'s: one writer
                return r
        recorder = Recorder(path, misses=misses)
        _install_hooks()
        _recorders.append(recorder)
    return recorder


def stop(recorder: Recorder) -> None:
    for thread in list(_pending):
        _flush(thread)
    with _lock:
        if recorder in _recorders:
            _recorders.remove(recorder)


def start_from_env() -> list[Recorder]:
    """The recorders AUTOTUNE_CACHE_RECORD and AUTOTUNE_CACHE_MISSES ask for (none when unset)."""
    env = settings.current()
    return [start(path, misses=misses) for path, misses in ((env.record, False), (env.misses, True)) if path]
