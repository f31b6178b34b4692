"""How a build's work is split over GPUs: one shard per build child, planned before any child starts. Pure.

The unit of sharding is the key, not the unit: every (kernel, key) of the plan has one owner shard, the only one
that tunes it, so the cache is the same whatever the GPU count and no key is benchmarked twice. A key is tuned
where a one-GPU build tunes it: in its home unit (the first unit of the plan that reaches it) at the token count
that first reaches it there (PlannedKey.tokens), after that unit's probe pass; the selection rule then sees the
same calls and the same probes (selection.py).

A shard drives each unit that holds a key it owns (a Part): the unit's token counts from the largest at which it
first reaches one of its owned keys down to the smallest, so the owner also launches its winners at every later
call of the unit, as a one-GPU build does (their compiled variants are what prune keeps, and what a server loads).
The other keys those calls reach are foreign to the shard: launched with their first config, never benchmarked,
never written, never reported (child.py); their owner reports them. A unit is done when each of its parts is.
One shard owns every key, so a one-GPU build drives every unit whole, as before.

Work is counted in configs to benchmark (`PlannedKey.configs`) plus KEY_COST per key, and keys are placed largest
first on the least loaded shard.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .spec import Unit

KeyId = tuple   # (kernel, key): one autotune entry

# What tuning a key costs besides screening its configs, in configs: the shortlist timed again (4 rounds of up to
# 5 candidates at 25 ms, and again at the probe size) against about 35 ms to screen one config. An estimate from
# the H200 build's 20.7 s of benchmarking for 24 keys and 236 configs (BENCHMARKS.md), not a measurement per key.
KEY_COST = 8


def unit_configs(unit: Unit) -> int:
    """Configs the unit benchmarks when nothing is on disk yet, e.g. 59 for one FLA unit on sm_90."""
    return sum(k.configs or 0 for k in unit.keys)


@dataclass(frozen=True)
class Part:
    """A unit's share of one shard: drive `unit` at `tokens` (a tail of unit.tokens: largest first), tune and
    report the keys of `owns`. Example: Part(unit=<TP 1 unit>, shard=1, tokens=(8192, 4096), owns=(<l2norm NB 2>,
    <l2norm NB 1>))."""
    unit: Unit
    shard: int
    tokens: tuple[int, ...]
    owns: tuple[KeyId, ...]    # in the unit's key order
    tunes: frozenset = frozenset()   # ... of which this unit is the home (the others are on disk by then)

    @property
    def id(self) -> str:
        return self.unit.id

    @property
    def configs(self) -> int:
        """Configs this part benchmarks when nothing is on disk yet."""
        return sum(k.configs or 0 for k in self.unit.keys if (k.kernel, tuple(k.key)) in self.tunes)


@dataclass(frozen=True)
class ShardPlan:
    """Who tunes what. `shards[s]`: shard s's parts in plan order; `owner[key]`: the shard that tunes the key."""
    shards: tuple[tuple[Part, ...], ...]
    owner: dict[KeyId, int]

    def foreign(self, shard: int) -> frozenset[KeyId]:
        """The keys shard `shard` launches untuned: every key of the plan it does not own."""
        return frozenset(k for k, s in self.owner.items() if s != shard)

    def loads(self) -> list[int]:
        """Configs each shard benchmarks, e.g. [59, 59, 59, 59]."""
        return [sum(p.configs for p in parts) for parts in self.shards]


def _cost(configs: int | None) -> int:
    return (configs or 0) + KEY_COST


def plan_parts(units: Sequence[Unit], n: int) -> ShardPlan:
    """Split the keys of `units` over at most `n` shards (never more shards than keys and keyless units, no
    empty shard).

    Keys are placed largest first (configs + KEY_COST; ties in plan order) on the shard least loaded after taking
    it; among equally loaded shards, the one that drives the key's home unit at that token count already (no
    extra call), then the lower one. Example (KEY_COST 0): keys of 25, 12, 9 and 6 configs on 2 shards: [25] and
    [12, 9, 6]. A unit without keys (a replay unit: no planned keys, no token counts) is driven whole by the
    least loaded shard."""
    units = list(units)
    if n < 1:
        raise ValueError(f"shards must be >= 1, got {n}")
    home: dict[KeyId, tuple[int, int, int | None]] = {}   # key -> (home unit index, its token count, configs)
    for i, unit in enumerate(units):
        for k in unit.keys:
            home.setdefault((k.kernel, tuple(k.key)), (i, k.tokens, k.configs))
    keyless = sum(1 for unit in units if not unit.keys)   # replay units: their keys are known only when they run
    n = max(1, min(n, len(home) + keyless))
    order = {k: j for j, k in enumerate(home)}
    load = [0] * n
    top: list[dict[int, int]] = [{} for _ in range(n)]   # per shard: home unit index -> largest token count driven
    owner: dict[KeyId, int] = {}
    for key in sorted(home, key=lambda k: (-_cost(home[k][2]), order[k])):
        unit_index, tokens, configs = home[key]
        best = min(range(n), key=lambda s: (load[s], top[s].get(unit_index, 0) < tokens, s))
        owner[key] = best
        load[best] += _cost(configs)
        top[best][unit_index] = max(top[best].get(unit_index, 0), tokens)

    shards: list[list[Part]] = [[] for _ in range(n)]
    for i, unit in enumerate(units):
        mine: dict[int, list] = {}
        for k in unit.keys:
            mine.setdefault(owner[(k.kernel, tuple(k.key))], []).append(k)
        if not unit.keys:   # driven whole where the least is to do, and counted as one key's worth there
            s = min(range(n), key=lambda s: (load[s], s))
            mine[s], load[s] = [], load[s] + _cost(None)
        for s in sorted(mine):
            first = max((k.tokens for k in mine[s]), default=max(unit.tokens, default=0))
            owns = tuple(dict.fromkeys((k.kernel, tuple(k.key)) for k in mine[s]))
            tunes = frozenset(k for k in owns if home[k][0] == i)
            shards[s].append(Part(unit=unit, shard=s, tokens=tuple(t for t in unit.tokens if t <= first), owns=owns,
                                  tunes=tunes))
    # every shard owns a key (n <= keys, and the first n keys go to n empty shards): none is empty but with no units
    return ShardPlan(shards=tuple(tuple(parts) for parts in shards if parts), owner=owner)
