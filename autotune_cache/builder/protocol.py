"""The messages between the build parent and its child, one frozen record per kind, and the child's options.

Child -> parent, on a Channel (channel.py: a pipe, written synchronously), in this order:
  Hello           after the kernel sources' env is set and the driver is up
  NoGPU           instead of Hello when there is no CUDA GPU (and no emulation)
  UnitStart       before driving a unit
  LookedUp        sent after the call that made it returned: `binaries` = compiled-kernel dirs (relative) the
                  winning config launched
  Binaries        a later call of the same key launched another compiled variant
  NoLookup        a key whose configs pruned to one, which Triton (3.8+) keeps without a lookup: sent, like a LookedUp,
                  after its call returned, with its binaries; again if a later call launched another variant
  UnitDone | UnitFailed   a failed unit ends the child: CUDA may be unusable
  Done
Parent -> child, on the same Channel after Hello: Go or Stop.
A unit's probe passes (selection.py: its call at each probe token count, dry, before its own calls) send nothing,
and neither do the keys of ChildOptions.foreign (another child owns them: shard.py). In a sharded build a unit is
driven by several children, each sending UnitStart ... UnitDone for its part of it.

Every record pickles with plain fields (and the pydantic models of spec.py and selection.py): the parent never
imports torch or triton, so nothing here may need them.
"""
from __future__ import annotations

from dataclasses import dataclass

from .selection import Settings as SelectionSettings
from .spec import Unit


# -- child -> parent ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    fingerprint: dict        # cache.fingerprint.Fingerprint, dumped: the environment the keys are made in
    pid: int


@dataclass(frozen=True)
class NoGPU:
    message: str


@dataclass(frozen=True)
class UnitStart:
    unit: str


@dataclass(frozen=True)
class LookedUp:
    """One autotune lookup of a unit's call. Without `file` (tuned without the disk cache: a pre_hook or an empty
    key) the fields of the file are None."""
    unit: str
    tokens: int | None       # the call's token count; None: before the unit's first call
    kernel: str
    key: tuple
    hit: bool
    configs: int             # configs benchmarked (the file's timings, where there is a file)
    file: str | None = None  # relative to the cache dir
    sha256: str | None = None
    size: int | None = None
    winner: dict | None = None
    best: float | None = None
    margin: float | None = None
    selection: dict | None = None     # how the winner was chosen (selection.py); None: Triton's choice, or a hit
    binaries: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoLookup:
    """A key of a unit's call whose configs pruned to one config on a Triton that then looks nothing up (3.8+:
    autotuner/disk.py PrunedToOne): reached, with no disk entry to make. The manifest lists it under its unit
    (cache/manifest.py PrunedKey); coverage counts it as covered."""
    unit: str
    tokens: int | None       # the call's token count
    kernel: str
    key: tuple
    binaries: tuple[str, ...] = ()   # compiled-kernel dirs (relative) the one config launched so far


@dataclass(frozen=True)
class Binaries:
    unit: str
    file: str
    binaries: tuple[str, ...]   # every compiled-kernel dir the key launched in this unit so far


@dataclass(frozen=True)
class UnitDone:
    unit: str
    seconds: float
    bench_seconds: float        # ... of which benchmarking misses
    precompile: dict | None     # the compile workers' report (precompile.Pool.ready), on the unit that waited
    compiles: int | None        # kernels the child compiled itself; None: unknown (no compilation listener)


@dataclass(frozen=True)
class UnitFailed:
    unit: str
    error: str                  # one line: the exception's type and first line
    traceback: str
    retry: bool = True          # False: another attempt fails alike (an unreplayable record), none is made


@dataclass(frozen=True)
class Done:
    pass


# -- parent -> child ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Go:
    pass


@dataclass(frozen=True)
class Stop:
    pass


# -- what the child is given at its start -------------------------------------------------------------------------
@dataclass(frozen=True)
class ChildUnit:
    unit: Unit
    index: int       # its position in the whole plan: the fault hook names units by it (a child's share shrinks)
    attempt: int     # which attempt of the unit this child makes, from 1
    # The token counts this child drives the unit at (shard.Part: a tail of unit.tokens); None: all of them
    tokens: tuple[int, ...] | None = None

    @property
    def calls(self) -> tuple[int, ...]:
        return self.unit.tokens if self.tokens is None else self.tokens


@dataclass(frozen=True)
class ChildOptions:
    cache_dir: str
    units: tuple[ChildUnit, ...]
    emulate: bool
    selection: SelectionSettings     # how winners are chosen
    overlap_compile: bool = False    # benchmark a unit once its own configs are compiled, not every unit's
    gpu: str | None = None           # a physical GPU index: this child sees only that one (a sharded build)
    # Precompile worker processes; None: AUTOTUNE_CACHE_COMPILE_PROCESSES, else every core but one
    compile_processes: int | None = None
    # (kernel, key) pairs another child tunes (shard.ShardPlan.foreign): launched with their first config, never
    # benchmarked, written or reported here. () = this child tunes every key it reaches.
    foreign: frozenset = frozenset()
    # Cache-invalidating env vars set ("" = unset) in the child before anything else, so its compile workers have
    # them too (BuildSpec.triton_env, triton_env.py); () = the parent's environment as it is.
    triton_env: tuple[tuple[str, str], ...] = ()
    # The parent's environment and working dir when it starts the child, which the child takes before anything
    # else: it is forked from a server process started at the build's first child (supervisor.py), whose own
    # environment is from then. None: as inherited.
    environ: tuple[tuple[str, str], ...] | None = None
    cwd: str | None = None
    build_pid: int | None = None   # the build's process: the child ends when it does (child._die_with_build)
