"""BuildSpec -> units of work and the keys each will tune. Pure: no GPU, no kernel imports. A plan past
MAX_PLAN_CALLS or MAX_PLAN_KEYS (spec.py) is refused as it is made, before it holds more than that."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from .. import targets as targets_mod
from ..errors import SpecError
from .spec import MAX_PLAN_CALLS, MAX_PLAN_KEYS, BuildSpec, ModelUnit, PlannedKey, Unit

if TYPE_CHECKING:
    from ..shapes import RankShape

_SMALLER = "lower --max-tokens, or give fewer --tokens, TP degrees or targets"


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    spec: BuildSpec
    units: tuple[Unit, ...]

    def reached_once(self) -> list[tuple[Unit, PlannedKey]]:
        """Each (kernel, key) once, with the first unit reaching it, which plans it: one disk key, one autotune
        file, tuned once however many units reach it (a later unit, or another GPU's, finds it on disk; shard.py
        gives each one owner). TP 1 and 2 of a model share the l2norm keys of their common token buckets. What
        `keys`, `configs` and verify's coverage count."""
        seen: dict[tuple, tuple[Unit, PlannedKey]] = {}
        for u in self.units:
            for k in u.keys:
                seen.setdefault((k.kernel, tuple(k.key)), (u, k))
        return list(seen.values())

    @property
    def keys(self) -> int:
        """Distinct (kernel, key) pairs: what `verify` counts and `inspect` lists once each."""
        return len(self.reached_once())

    @property
    def shared(self) -> int:
        """Keys reached by more than one unit, counted once in `keys` (each unit's table lists them)."""
        return sum(len(u.keys) for u in self.units) - self.keys

    @property
    def configs(self) -> int:
        """Configs to benchmark: each distinct key's once."""
        return sum(k.configs or 0 for _, k in self.reached_once())


def unit_id(target: str, shape: RankShape, dtypes: dict[str, str], tokens: Iterable[int]) -> str:
    dims = f"H{shape.H}-HV{shape.HV}-K{shape.K}-V{shape.V}"
    return f"{target}/{dims}/{targets_mod.dtype_tag(dtypes)}/T{'_'.join(map(str, sorted(tokens)))}"


def plan_units(spec: BuildSpec) -> list[ModelUnit]:
    units: dict[str, ModelUnit] = {}
    calls = keys = 0   # so far, over the units made
    if spec.model is None:
        raise SpecError("a plan needs a model (--model or --config), or records to replay (--from-record)")
    for target_name in spec.targets:
        target = targets_mod.get(target_name)
        for tp in spec.tp:
            shape = spec.model.per_rank(tp)
            dtypes = target.default_dtypes(shape)
            derived = target.token_counts(shape, spec.max_tokens)
            extra = [t for t in spec.tokens if t <= spec.max_tokens] if spec.tokens else []
            tokens = tuple(sorted(set(derived) | set(extra), reverse=True))
            uid = unit_id(target_name, shape, dtypes, tokens)
            if uid in units:  # another TP degree (or model) with the same per-rank shape: one unit serves both
                units[uid] = units[uid].model_copy(update={"tp": units[uid].tp + (tp,)})
                continue
            calls += len(tokens)
            if calls > MAX_PLAN_CALLS:
                raise SpecError(f"the plan would drive more than {MAX_PLAN_CALLS} serving calls (token counts over "
                                f"its units), the most a plan may have: {_SMALLER}")
            unit_keys = expected_keys(target, shape, dtypes, tokens, limit=MAX_PLAN_KEYS - keys)
            keys += len(unit_keys)
            units[uid] = ModelUnit(id=uid, target=target_name, shape=shape.model_copy(update={"tp": tp}), tp=(tp,),
                                   dtypes=dtypes, tokens=tokens, keys=tuple(unit_keys))
    return list(units.values())


def expected_keys(target: targets_mod.Target, shape: RankShape, dtypes: dict[str, str], tokens: Iterable[int],
                  limit: int = MAX_PLAN_KEYS) -> list[PlannedKey]:
    """Every (kernel, key) the serving call reaches for these token counts, in first-reached order; SpecError
    past `limit` of them (what is left of MAX_PLAN_KEYS). A key whose configs prune to one at run time is planned
    like any other (pruning runs on the call's arguments, which a plan never makes): on Triton 3.8+ it gets no
    entry, the build lists it as pruned to one (manifest.PrunedKey) and verify's coverage counts it covered."""
    seen: dict[tuple, PlannedKey] = {}
    for t in tokens:
        for kernel in target.kernels:
            key = kernel.key(shape, t, dtypes)
            if (kernel.name, key) not in seen:
                if len(seen) >= limit:
                    raise SpecError(f"the plan would tune more than {MAX_PLAN_KEYS} (kernel, key) pairs, the most "
                                    f"a plan may have: {_SMALLER}")
                seen[(kernel.name, key)] = PlannedKey(kernel=kernel.name, fields=kernel.fields(shape, t), key=key,
                                                      configs=kernel.configs_sm90, tokens=t)
    return list(seen.values())


def plan(spec: BuildSpec) -> Plan:
    return Plan(spec=spec, units=tuple(plan_units(spec)))


