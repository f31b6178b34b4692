"""Records -> a build plan: one replay unit per recorded kernel, holding the recorded calls of its keys. Pure: no
GPU, no kernel imports. What the records themselves show cannot be made again (an argument not described, a grid
not evaluated) is reported per kernel here, before anything runs; what only the child can tell (the module does
not import, the kernel's source changed) fails that kernel's unit, without retries (child.py).

After the build, `compare()` holds the product's claim against the recorded processes: every lookup they made
whose autotune file they named must now be in the manifest under that very file (the same disk key).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..errors import SpecError
from ..record import store
from ..record.schema import KernelId, Record
from .plan import Plan
from .spec import MAX_PLAN_KEYS, BuildSpec, PlannedKey, ReplayUnit

TARGET = ReplayUnit.model_fields["target"].default   # "record": what the manifest names a replay unit's target


@dataclass(frozen=True)
class Unreplayable:
    """Recorded keys of one kernel that cannot be made again, e.g. kernel "fla.ops.x.k", keys 2, reason
    "argument #3 is a foo.Bar, which a record cannot describe"."""
    kernel: str
    keys: int
    reason: str


@dataclass(frozen=True)
class ReplayPlan:
    plan: Plan
    records: int                            # distinct lookups read (after merging)
    lines: int                              # lines read from the record files
    unreplayable: tuple[Unreplayable, ...]
    warnings: tuple[str, ...]               # lines that are no record


def _kernel_key(k: KernelId) -> tuple:
    return (k.module, k.qualname, k.source_sha256, k.configs_sha256)


def unit_id(kernel: KernelId, records) -> str:
    keys = "\n".join(sorted(r.model_dump_json(include={"key", "pruned_sha256"}) for r in records))
    digest = hashlib.sha256(f"{kernel.source_sha256}\n{kernel.configs_sha256}\n{keys}".encode()).hexdigest()[:12]
    return f"{TARGET}/{kernel.label}/{digest}"


def units(records) -> tuple[list[ReplayUnit], list[Unreplayable]]:
    """One unit per kernel (module, qualified name, source, config list), its replayable records in record
    order; the others reported per kernel with the first reason."""
    groups: dict[tuple, list[Record]] = {}
    for rec in records:
        groups.setdefault(_kernel_key(rec.kernel), []).append(rec)
    made, refused = [], []
    for group in groups.values():
        kernel = group[0].kernel
        bad = [(r, r.problems()) for r in group]
        bad = [(r, p) for r, p in bad if p]
        if bad:
            refused.append(Unreplayable(kernel=kernel.label, keys=len(bad), reason=bad[0][1][0]))
        good = [r for r in group if not r.problems()]
        if not good:
            continue
        keys = tuple(PlannedKey(kernel=kernel.name, fields={}, key=tuple(r.key), configs=r.configs, tokens=0)
                     for r in good)
        made.append(ReplayUnit(id=unit_id(kernel, good), keys=keys, kernel=kernel, replay=tuple(good)))
    return made, refused


def plan(paths, spec: BuildSpec) -> ReplayPlan:
    """The plan of a build from record files (store.read merges and dedupes them); SpecError where they hold no
    record at all, or more keys than a plan may have."""
    loaded = store.read(paths)
    if not loaded.records:
        why = f" ({loaded.warnings[0]}{' ...' if len(loaded.warnings) > 1 else ''})" if loaded.warnings else ""
        raise SpecError(f"no autotune lookup recorded in {', '.join(map(str, paths))}{why}")
    if len(loaded.records) > MAX_PLAN_KEYS:
        raise SpecError(f"the records hold {len(loaded.records)} distinct lookups, more than the {MAX_PLAN_KEYS} a "
                        "plan may tune")
    made, refused = units(loaded.records)
    return ReplayPlan(plan=Plan(spec=spec, units=tuple(made)), records=len(loaded.records), lines=loaded.lines,
                      unreplayable=tuple(refused), warnings=loaded.warnings)


@dataclass(frozen=True)
class Comparison:
    """Recorded lookups that named their autotune file (the disk cache was on), against a built manifest:
    `same` are listed under that file, `other` were built under another disk key (another Triton, ptxas, GPU or
    config list here) or not at all, as "kernel key: recorded file"."""
    same: int
    other: tuple[str, ...]


def compare(replay_plan: ReplayPlan, manifest) -> Comparison:
    same, other = 0, []
    for unit in replay_plan.plan.units:
        for rec in unit.replay if isinstance(unit, ReplayUnit) else ():
            if rec.file is None:
                continue
            if rec.file in manifest.entries:
                same += 1
            else:
                other.append(f"{rec.kernel.name} {list(rec.key)}: {rec.file}")
    return Comparison(same=same, other=tuple(other))
