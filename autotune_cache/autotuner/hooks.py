"""Everything this tool puts into Triton: the wrappers on `Autotuner`'s methods and the one order their hooks run
in, the few module functions Triton looks up at each call (wrap_global), and `take`: another's replacement of a
method taken back out of Triton (vLLM's force_first_config), to be called from a hook. Nothing else assigns into
Triton: not the other rooms, not scripts/ (tests/test_triton_seam.py).

Triton (3.4-3.9) has no per-call hook on an Autotuner's construction, pruning, disk lookup or benchmark: 3.8's
`knobs.autotuning.listener` is told of a decision after it is made and is one slot for the whole process, and
`prune_configs_by` / `do_bench` belong to the kernel's author, not to a process serving someone else's kernels. So
the methods themselves are wrapped, privately: ONE wrapper per method, installed the first time a hook is added
for it, once per process, under one lock. Each wrapper runs the hooks added for its method in the order of PHASES
(first = outermost), whatever order the rooms added them in, then Triton's own method.

    hooks.add("record", "prune_configs", fn)   # fn(call, tuner, kwargs): call(tuner, kwargs) is the rest
    hooks.add("serve", "miss", fn)             # an event inside a disk lookup (disk.py fires it): fn(tuner, key)

Thread-safe: adding and removing replace whole tuples under the lock; a call reads the current tuple once.
"""
from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Who hooks the Autotuner, in the order their hooks run at every method and event (first = outermost / first told).
PHASES = (
    "foreign",     # builder/child (shard.py): a key another build child tunes launches its first config, untuned,
                   # picked by Triton's own prune_configs before any hook below has a side effect
    "worker",      # builder/precompile: a compile worker's run() compiles its share of configs and launches nothing
    "lookups",     # disk.py: every disk lookup and launch (and a key pruned to one that 3.8+ never looks up), told
                   # to the events' hooks below
    "precompile",  # builder/precompile: every pruned config compiled on threads before the benchmark
    "selection",   # builder/selection: the screening budget; the robust winner once a miss is benchmarked
    "emulation",   # builder/emulation: the config being timed, for the fake GPU's benchmarker
    "record",      # record/recorder: each lookup described; a miss marked before a strict loader's hook may raise
    "serve",       # serve/loader: new target autotuners read the cache; the report's counters; strict, a miss raises
    "listen",      # everyone else: the build child's report, the stand-in's counters, scripts' counters, tests
    "replacement", # Triton's method itself replaced, under every hook (it never calls on; "worker" replaces run
                   # above them all instead): scripts/bench_modes.py's first-config mode runs vLLM's
                   # force_first_config run() in place of Triton's, and the counters of "listen" see each call
)
# Wrapped: hook(call, tuner, *args, **kwargs) returns what the method returns; call(tuner, *args, **kwargs) runs
# the hooks of the later phases, then Triton's method. A hook that never calls `call` replaces the method.
METHODS = ("__init__", "run", "prune_configs", "check_disk_cache", "_bench")
# Fired by disk.py at a lookup (pruned: where none is made): hook(*what) -> None; may raise to fail the call.
#   before(tuner, tuning_key)    each disk lookup, before anything is read (the loader's deferred checks)
#   miss(tuner, tuning_key)      a disk miss, before Triton benchmarks it
#   benched(tuner, tuning_key)   after the benchmark, before Triton writes the file (the winner may still change)
#   lookup(disk.Lookup)          after each disk lookup
#   launch(disk.Launch)          after each call of an autotuned kernel with more than one config
#   pruned(disk.PrunedToOne)     a call's configs pruned to one and Triton (3.8+) looks nothing up: no lookup follows
EVENTS = ("before", "miss", "benched", "lookup", "launch", "pruned")
_MARK = "_autotune_cache_hooks"   # on our wrappers: a second copy of this module replaces, never stacks, them


@dataclass(frozen=True)
class _Hook:
    rank: tuple[int, int]   # (phase's place in PHASES, order added): the order hooks run in
    phase: str
    fn: Callable


_lock = threading.Lock()
_added = itertools.count()
_hooks: dict[str, tuple[_Hook, ...]] = {}        # method or event -> its hooks, in PHASES order
_originals: dict[str, Callable] = {}             # method -> Triton's own, once wrapped
_calls: dict[str, Callable] = {}                 # method -> its hooks composed around Triton's own
_globals: dict[str, Any] = {}                    # "module.name" of a Triton global -> Triton's own, once replaced


def add(phase: str, at: str, fn: Callable) -> None:
    """Run `fn` at `at` (a METHOD or an EVENT) in `phase`'s place. Adding the same fn to the same phase and place
    again is a no-op."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}: one of {', '.join(PHASES)}")
    if at not in METHODS and at not in EVENTS:
        raise ValueError(f"unknown method or event {at!r}: one of {', '.join(METHODS + EVENTS)}")
    with _lock:
        current = _hooks.get(at, ())
        if any(h.phase == phase and h.fn == fn for h in current):   # ==: a bound method is made anew each time
            return
        hook = _Hook((PHASES.index(phase), next(_added)), phase, fn)
        _hooks[at] = tuple(sorted((*current, hook), key=lambda h: h.rank))
        if at in METHODS:
            _install(at)
            _compose(at)


def remove(phase: str, at: str, fn: Callable) -> None:
    with _lock:
        _hooks[at] = tuple(h for h in _hooks.get(at, ()) if not (h.phase == phase and h.fn == fn))
        if at in _originals:
            _compose(at)


def fire(event: str, *what: Any) -> None:
    """Call the event's hooks in PHASES order; an exception (a strict miss) propagates to the kernel call."""
    for hook in _hooks.get(event, ()):
        hook.fn(*what)


def listened(event: str) -> bool:
    return bool(_hooks.get(event))


def phases(at: str) -> tuple[str, ...]:
    """The phases of the hooks at a method or event, in the order they run (for tests and debugging)."""
    return tuple(h.phase for h in _hooks.get(at, ()))


def triton(method: str) -> Callable:
    """Triton's own Autotuner method, without any hook."""
    import triton.runtime.autotuner as at
    return _originals.get(method) or getattr(at.Autotuner, method)


def take(method: str, install: Callable[[], Any]) -> Callable | None:
    """Run `install()`, someone else's code that assigns its own Autotuner.<method> (vLLM's
    force_first_config.install assigns `Autotuner.run`), and take what it put there: returned, for a hook of ours to
    call, with the method put back as it was before (our wrapper or Triton's own), also when install() raises. None
    where install() left the method as it was. install() runs without the lock (it may import modules that add
    hooks); it must not be racing another thread's first hook on the same method."""
    import triton.runtime.autotuner as at
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: one of {', '.join(METHODS)}")
    before = getattr(at.Autotuner, method)
    try:
        install()
    finally:
        with _lock:
            after = getattr(at.Autotuner, method)
            setattr(at.Autotuner, method, before)
    return None if after is before else after


def wrap_global(module: str, name: str, make: Callable[[Callable], Callable]) -> None:
    """Replace the function `name` of Triton's `module` by make(Triton's own), once per process. For what Triton
    resolves through a module global at each call: the autotuner's get_cache_manager and triton_key, the
    compiler's make_backend."""
    import importlib
    with _lock:
        if f"{module}.{name}" in _globals:
            return
        owner = importlib.import_module(module)
        current = getattr(owner, name)
        original = current.__wrapped__ if getattr(current, _MARK, False) else current
        wrapper = make(original)
        functools.update_wrapper(wrapper, original)
        setattr(wrapper, _MARK, True)
        _globals[f"{module}.{name}"] = original
        setattr(owner, name, wrapper)


def _install(method: str) -> None:
    """Under _lock: wrap Autotuner.<method> once per process."""
    import triton.runtime.autotuner as at
    if method in _originals:
        return
    current = getattr(at.Autotuner, method)
    original = current.__wrapped__ if getattr(current, _MARK, False) else current
    _originals[method] = _calls[method] = original

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _calls[method](self, *args, **kwargs)

    functools.update_wrapper(wrapper, original)
    setattr(wrapper, _MARK, True)
    setattr(at.Autotuner, method, wrapper)


def _compose(method: str) -> None:
    """Under _lock: the method's hooks around Triton's own, composed once per change, not per call."""
    call = _originals[method]
    for hook in reversed(_hooks.get(method, ())):
        call = functools.partial(hook.fn, call)
    _calls[method] = call
