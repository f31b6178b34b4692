"""Building into a cache dir, the one way every caller does it (`autotune-cache build`, `build --from-record`,
`ensure`, the public `build()`, a fleet job): the request checked, planned, the dir prepared, the build run, and on
failure the one cleanup rule (cache/files.Created): the dirs, lock file and manifest this call created are taken
away, nothing that was there before it. A build whose units failed after their retries (BuildFailedError) or that
was interrupted keeps its finished units: the manifest records them, and the same call again builds the rest.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..cache import location
from ..cache.files import Created
from ..cache.location import CacheDir
from ..errors import BuildFailedError, SpecError

if TYPE_CHECKING:   # the build modules are imported when a build runs
    from rich.console import Console

    from ..builder.plan import Plan
    from ..builder.replay_unit import ReplayPlan
    from ..builder.spec import BuildSpec
    from ..cache.manifest import Manifest

# What a failed build keeps: its finished units (the manifest lists them; the same build again does the rest).
KEEPS = (BuildFailedError, KeyboardInterrupt)


def run(plan: Plan, given: str | os.PathLike[str] | None, *, console: Console | None = None,
        progress: bool | str = True, devices: tuple[str | None, ...] | None = None) -> tuple[CacheDir, Manifest]:
    """Build `plan` into the dir `given` names (made if absent: orchestrator.prepare_cache_dir) and return it with
    its manifest. Whatever fails before the build ends takes away what this call created, the dir included when
    it made it, and leaves everything else; BuildFailedError and an interrupt keep the finished units (KEEPS)."""
    from ..builder import orchestrator
    from ..cache import manifest as manifest_mod
    created = Created()
    with created.undone_on_error(keep=KEEPS):
        root = orchestrator.prepare_cache_dir(given, created)
        created.file_if_new(manifest_mod.path_of(root))   # a build that fails before it saves leaves none
        manifest = orchestrator.Build(plan, root, console=console, progress=progress, devices=devices,
                                      created=created).run()
    return root, manifest


def _checked(spec: BuildSpec, given: str | os.PathLike[str] | None) -> tuple[CacheDir, tuple[str | None, ...]]:
    """The cache dir (made absolute here, once) and the GPU of each child, after the checks every build makes before
    it plans or writes anything: a dir given (not empty, a directory or one that can be made: location.creatable),
    --triton-env's names cache-invalidating, the GPUs asked for visible."""
    from ..builder import gpus, triton_env
    if given is None:
        raise SpecError("build needs --cache-dir DIR")
    root = location.normalize(given)
    location.creatable(root)
    triton_env.check(dict(spec.triton_env))
    return root, gpus.for_build(spec.gpus, spec.emulate)


@dataclass(frozen=True)
class Built:
    """A plan built into a cache dir. Example: 2 units, 9 entries, 214 files (61.2 MB) in /models/cache.
    `manifest` is the whole dir's: it may list other plans' units too (another TP degree built there before)."""
    cache_dir: CacheDir
    manifest: Manifest
    units: int           # this plan's units done
    entries: int         # their autotune entries (files)
    pruned_to_one: int   # their keys whose configs pruned to one: reached, no entry (Triton 3.8+ looks them up nowhere)

    @property
    def files(self) -> int:
        return len(self.manifest.files)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.manifest.files.values())

    @property
    def env(self) -> dict[str, str]:
        """The cache-invalidating env vars every disk key holds: a server without exactly these misses everything."""
        return dict(self.manifest.fingerprint.env) if self.manifest.fingerprint else {}

    def as_dict(self) -> dict[str, Any]:
        return {"cache_dir": str(self.cache_dir), "units": self.units, "entries": self.entries,
                "pruned_to_one": self.pruned_to_one, "files": self.files, "bytes": self.bytes,
                "manifest": str(self.cache_dir / "manifest.json")}


def build_into(spec: BuildSpec, cache_dir: str | os.PathLike[str] | None = None, *, console: Console | None = None,
               progress: bool | str = True, on_plan: Callable[[Plan], None] | None = None) -> Built:
    """Tune every unit of `spec`'s plan into `cache_dir` (default spec.cache_dir). `on_plan(plan)` is called once
    the request is checked, before anything is written (the CLI shows the plan). Raises BuildFailedError (with
    .manifest; finished units kept) when units stayed failed, NoGPUError without a GPU unless spec.emulate (and then
    nothing this call created is left)."""
    from ..builder.plan import plan as make_plan
    root, devices = _checked(spec, spec.cache_dir if cache_dir is None else cache_dir)
    plan = make_plan(spec)
    if on_plan is not None:
        on_plan(plan)
    root, manifest = run(plan, root, console=console, progress=progress, devices=devices)
    return Built(cache_dir=root, manifest=manifest, **_counts(plan, manifest))


def _counts(plan: Plan, manifest: Manifest) -> dict[str, int]:
    """The plan's units done in the manifest, their autotune entries, and their keys pruned to one config (reached,
    no entry: Triton 3.8+ looks them up nowhere): a cache dir may hold other plans' units too."""
    ids = {u.id for u in plan.units}
    mine = [u for u in manifest.units.values() if u.id in ids]
    return {"units": sum(1 for u in mine if u.status == "done"),
            "entries": len({f for u in mine for f in u.entries}),
            "pruned_to_one": len({(p.kernel, tuple(p.key)) for u in mine for p in u.pruned_to_one})}


@dataclass(frozen=True)
class RecordsBuilt:
    """Recorded lookups built (`build --from-record`). Example: 3 of 3 recorded kernels, 7 entries; 7 lookups at
    the very autotune file their process looked up, 0 at another. `cache_dir` None: nothing was replayable."""
    plan: ReplayPlan
    cache_dir: CacheDir | None
    units: int = 0                   # recorded kernels built
    entries: int = 0
    pruned_to_one: int = 0
    failed: tuple[tuple[str, str], ...] = ()   # (unit, error) of each unit not built
    same_file: int = 0               # recorded lookups at the autotune file their process looked up
    other_file: tuple[str, ...] = ()   # those at another (replay_unit.compare)

    @property
    def ok(self) -> bool:
        return not self.plan.unreplayable and not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {"cache_dir": None if self.cache_dir is None else str(self.cache_dir), "records": self.plan.records,
                "units": self.units, "entries": self.entries, "pruned_to_one": self.pruned_to_one,
                "unreplayable": [vars(x) for x in self.plan.unreplayable],
                "failed": [{"unit": u, "error": e} for u, e in self.failed], "same_file": self.same_file,
                "other_file": list(self.other_file)}


def build_from_records(paths: Sequence[str | os.PathLike[str]], spec: BuildSpec,
                       cache_dir: str | os.PathLike[str] | None = None, *, console: Console | None = None,
                       progress: bool | str = True, on_plan: Callable[[ReplayPlan], None] | None = None
                       ) -> RecordsBuilt:
    """Build exactly the lookups recorded in `paths` (merged, deduplicated: replay_unit.plan) into `cache_dir`
    (default spec.cache_dir), with spec's build settings. Units that failed are in the result (`failed`), not raised;
    NoGPUError without a GPU unless spec.emulate (nothing this call created is left)."""
    from ..builder import replay_unit
    root, devices = _checked(spec, spec.cache_dir if cache_dir is None else cache_dir)
    rp = replay_unit.plan([os.fspath(p) for p in paths], spec)
    if on_plan is not None:
        on_plan(rp)
    if not rp.plan.units:
        return RecordsBuilt(plan=rp, cache_dir=None)
    failed: tuple[tuple[str, str], ...] = ()
    try:
        root, manifest = run(rp.plan, root, console=console, progress=progress, devices=devices)
    except BuildFailedError as e:
        assert e.manifest is not None   # Build.run raises it with the manifest
        manifest = e.manifest
        ids = {u.id for u in rp.plan.units}
        failed = tuple((r.id, str(r.error)) for r in manifest.units.values() if r.status != "done" and r.id in ids)
    cmp = replay_unit.compare(rp, manifest)
    return RecordsBuilt(plan=rp, cache_dir=root, failed=failed, same_file=cmp.same, other_file=tuple(cmp.other),
                        **_counts(rp.plan, manifest))
