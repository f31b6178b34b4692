"""How a build's units are split over GPUs: one shard per build child, planned before any child starts. Pure.

Work is counted in configs to benchmark (`PlannedKey.configs`), the build's dominant cost. A key is tuned once per
shard that reaches it: a later unit of the same shard finds it on disk, but two GPUs that reach the same key at once
both benchmark it and the last writer wins. So units whose keys overlap (FLA's l2norm_fwd_kernel keys, (D, NB,
dtypes), are shared between TP degrees) go to one shard where that does not unbalance the shards, and a unit's cost
on a shard counts only the keys that shard does not reach yet.
"""
from __future__ import annotations

from typing import Sequence

from .spec import Unit

KeyId = tuple   # (kernel, key): one autotune entry


def key_ids(unit: Unit) -> set[KeyId]:
    return {(k.kernel, tuple(k.key)) for k in unit.keys}


def keys_of(units: Sequence[Unit]) -> set[KeyId]:
    """Every key the units reach together."""
    return set().union(*map(key_ids, units))


def unit_configs(unit: Unit) -> int:
    """Configs the unit benchmarks when nothing is on disk yet, e.g. 59 for one FLA unit on sm_90."""
    return sum(k.configs or 0 for k in unit.keys)


def _configs(keys: set[KeyId], configs: dict[KeyId, int]) -> int:
    return sum(configs[k] for k in keys)


def overlapping_groups(units: Sequence[Unit]) -> list[list[Unit]]:
    """Units joined by shared keys (transitively), in plan order; groups ordered by their first unit."""
    parent = list(range(len(units)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[KeyId, int] = {}
    for i, unit in enumerate(units):
        for k in key_ids(unit):
            if k in owner:
                parent[root(i)] = root(owner[k])
            else:
                owner[k] = i
    groups: dict[int, list[Unit]] = {}
    for i, unit in enumerate(units):
        groups.setdefault(root(i), []).append(unit)
    return list(groups.values())


def plan_shards(units: Sequence[Unit], n: int) -> list[list[Unit]]:
    """Split `units` over at most `n` shards (never more shards than units, no empty shard), each in plan order.

    Greedy, largest first. The pieces placed are the groups of overlapping units (overlapping_groups), except
    that a group costing more than an even share of the whole build (total / n) is placed unit by unit. Each
    piece goes to the shard that is least loaded after taking it, where a piece costs a shard only the configs
    of keys the shard does not reach yet; ties go to the shard that already reaches more of its keys, then to the
    lower shard. Example: 4 units of 35 configs, A and B sharing a 25-config key, C and D sharing another, on 2
    shards: [A, B] and [C, D], 45 configs each (placed one by one: [A, C] and [B, D], 70 each).
    A plan whose units all reach the same keys stays on one shard: its later units are disk hits.
    """
    units = list(units)
    if n < 1:
        raise ValueError(f"shards must be >= 1, got {n}")
    if n == 1 or len(units) <= 1:
        return [units] if units else []
    order = {u.id: i for i, u in enumerate(units)}
    configs: dict[KeyId, int] = {}
    for unit in units:
        for k in unit.keys:
            configs[(k.kernel, tuple(k.key))] = k.configs or 0
    share = sum(configs.values()) / n
    pieces: list[list[Unit]] = []
    for group in overlapping_groups(units):
        whole = _configs(keys_of(group), configs)
        pieces.extend([group] if whole <= share else [[u] for u in group])

    pieces.sort(key=lambda p: (-_configs(keys_of(p), configs), order[p[0].id]))
    shards: list[list[Unit]] = [[] for _ in range(n)]
    reached: list[set[KeyId]] = [set() for _ in range(n)]
    load = [0] * n
    for piece in pieces:
        keys = keys_of(piece)

        def after(s):
            extra = _configs(keys - reached[s], configs)
            return load[s] + extra, extra, s

        best = min(range(n), key=after)
        load[best] = after(best)[0]
        reached[best] |= keys
        shards[best].extend(piece)
    return [sorted(s, key=lambda u: order[u.id]) for s in shards if s]


def shared_keys(shards: Sequence[Sequence[Unit]]) -> dict[KeyId, list[int]]:
    """Keys more than one shard reaches -> those shards: tuned on each (unless one finds the other's file on disk
    first); the build then records whichever file was written last."""
    seen: dict[KeyId, list[int]] = {}
    for i, shard in enumerate(shards):
        for k in keys_of(shard):
            seen.setdefault(k, []).append(i)
    return {k: s for k, s in seen.items() if len(s) > 1}
