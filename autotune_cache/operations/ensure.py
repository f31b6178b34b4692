"""ensure: make a cache dir serve a request, or say why it cannot. What the dir lacks for the spec's plan is built
(needs a GPU), the rest checked as the server's loader will check it (cache/trust.py), under the server's
cache-invalidating env vars. A cache for another environment (other Triton, Python, ptxas, GPU, env vars) is never
built into: it is a problem to report, or with `rebuild` a fresh cache is built beside it and swapped in
(cache/swap.py). `from_url`: the registry's cache is fetched first when this one is missing or stale
(registry/pull.py). What the init container, the vLLM plugin and an operator call; `autotune-cache ensure` renders
its result.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import settings
from ..amounts import count
from ..cache import location
from ..cache.files import Created
from ..cache.location import CacheDir
from ..errors import BuildFailedError, CacheDirError, NoGPUError

if TYPE_CHECKING:
    from rich.console import Console

    from ..builder.plan import Plan
    from ..builder.spec import BuildSpec
    from ..cache.manifest import Manifest

REBUILD_HINT = "run `autotune-cache ensure ... --rebuild` (builds a fresh cache beside it and swaps it in)"


@dataclass(frozen=True)
class Ensured:
    """What ensure found and did. Example: ok, 2 units present and intact in /models/cache, built now.
    `ok`: the server will hit (every planned unit built and intact, keys this machine's Triton makes, a cache the
    loader trusts, not emulated unless allowed); else `problems` says why each would miss and `remedy` what to do.
    `incomplete`: the build of what was missing left units failed (its error); the dir keeps what was finished."""
    cache_dir: CacheDir
    units: int                  # units of the spec's plan
    built: bool = False         # units were built into the dir now
    rebuilt: bool = False       # a fresh cache was built beside it and swapped in
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    remedy: str | None = None
    emulated: bool = False      # a cache built with --emulate (allowed: arbitrary winners)
    incomplete: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.incomplete is None

    def as_dict(self) -> dict[str, Any]:
        return {"cache_dir": str(self.cache_dir), "units": self.units, "built": self.built, "rebuilt": self.rebuilt,
                "ok": self.ok, "problems": list(self.problems), "warnings": list(self.warnings),
                "remedy": self.remedy}


def unit_gaps(manifest: Manifest | None, plan: Plan, cache_dir: Path) -> list[str]:
    """Why each planned unit would not hit: missing, failed, or an entry file gone or changed."""
    gaps = []
    for unit in plan.units:
        rec = manifest.units.get(unit.id) if manifest else None
        if manifest is None or rec is None or rec.status != "done":
            gaps.append(f"{unit.id}: {'not built' if rec is None else rec.status}")
        elif (name := manifest.damaged_entry(rec, cache_dir)) is not None:
            gaps.append(f"{unit.id}: entry {name} missing or changed")
    return gaps


def stale(m: Manifest | None, allow_emulated: bool | None, env: dict[str, str] | None) -> list[str]:
    """Why the cache in the dir can never hit here, whatever is built into it: another environment's disk keys
    (fingerprint.misses_here; `env`: the server's cache-invalidating env vars, None: ensure's own), or an emulated
    build not allowed."""
    from ..cache import fingerprint
    from ..cache.verify import emulated_problem
    if m is None or m.fingerprint is None:
        return []
    problems = fingerprint.misses_here(m.fingerprint, query_gpu=True, env=env)[0]
    emulated = emulated_problem(m.fingerprint, allow_emulated)
    return problems + ([emulated] if emulated else [])


class _Ensure:
    """One ensure call: the dir, the plan, and how a build of it is shown."""

    def __init__(self, plan: Plan, root: CacheDir, console: Console | None, progress: bool | str, notes: bool):
        self.plan, self.root, self.progress = plan, root, progress
        self.console = console
        self.notes = notes and console is not None

    def say(self, text: str) -> None:
        if self.notes and self.console is not None:
            self.console.print(text)

    def build(self, into: Path, gaps: list[str]) -> Manifest:
        """Build the plan's missing units into `into` (operations/build.run: what this call created goes again on
        a failure, so a build that cannot start (no GPU) leaves nothing)."""
        from .build import run
        self.say(f"{len(gaps)} of {count(len(self.plan.units), 'unit')} to build in {into}: " + "; ".join(gaps))
        try:
            return run(self.plan, into, console=self.console, progress=self.progress)[1]
        except NoGPUError as e:
            raise NoGPUError(f"the cache lacks {count(len(gaps), 'unit')} and there is no GPU to build them "
                             f"({e})") from None

    def rebuild(self) -> None:
        """A fresh cache beside the dir, relocated for its path and swapped in (cache/swap.py); a failed rebuild
        takes the fresh dir away and leaves the old cache as it was."""
        from ..cache import swap
        fresh = swap.fresh_dir_beside(self.root)
        created = Created()
        with created.undone_on_error():
            try:
                made = created.dirs(fresh)
            except OSError as e:
                raise CacheDirError(f"cannot rebuild beside {self.root}: {fresh}: {e.strerror or e} (--rebuild "
                                    "needs a writable parent dir)") from None
            if not made:
                raise CacheDirError(f"{fresh} exists (left by an earlier rebuild?): remove it, then run ensure again")
            self.say(f"rebuilding {self.root} from scratch in {fresh}, then swapping it in")
            self.build(fresh, [f"{u.id}: rebuild" for u in self.plan.units])
            swap.relocate(fresh, self.root)
            swap.swap_in(fresh, self.root)


def ensure(spec: BuildSpec, cache_dir: str | os.PathLike[str] | None = None, *, rebuild: bool = False,
           allow_emulated: bool | None = None, allow_writable: bool | None = None,
           public_key: str | os.PathLike[str] | None = None, from_url: str | None = None,
           console: Console | None = None, progress: bool | str = True, notes: bool = True) -> Ensured:
    """Make `cache_dir` (default spec.cache_dir) serve `spec`: build what it lacks (a GPU, or spec.emulate), check
    the rest as the server's loader will, and return what was found and done (`Ensured.ok`: the server will hit).
    `rebuild`: a cache that cannot serve as it is (another environment's, damaged, refused) is rebuilt beside it and
    swapped in; without it, it is left alone and its problems returned. `allow_emulated`, `allow_writable`,
    `public_key`: as the server's AUTOTUNE_CACHE_ALLOW_EMULATED, _ALLOW_WRITABLE, _PUBLIC_KEY (None: those env vars).
    `from_url`: fetch the registry's cache first when this one is missing or stale. `console`: where the build's
    progress and ensure's notes go (None: stderr, no notes); `notes`: False for the progress alone.
    Raises NoGPUError when units are missing and there is no GPU (nothing this call created is left),
    CacheDirError for a path that is no directory, UnsupportedTritonError for a Triton this tool cannot use."""
    from ..autotuner import versions
    from ..builder import triton_env
    from ..builder.plan import plan as make_plan
    from ..cache import manifest as manifest_mod
    from ..cache import trust

    given = spec.cache_dir if cache_dir is None else cache_dir
    if given is None:
        raise CacheDirError("ensure needs a cache dir (--cache-dir DIR)")
    # every input checked before anything is planned, fetched or made: a mistake creates nothing
    root = location.normalize(given)
    location.creatable(root, writes=False)   # a complete cache may be read-only: ensure then only checks it
    versions.require()   # before a fingerprint is read or a unit built: an unsupported Triton can do neither
    # the server's values, what the build runs with and what the cache is checked against
    server_env = triton_env.check(dict(spec.triton_env))
    p = make_plan(spec)
    run = _Ensure(p, root, console, progress, notes)
    m = manifest_mod.load(root) if root.is_dir() else None
    if from_url:   # the registry's cache when this one is missing or stale (registry/pull.py)
        from ..registry.pull import pull_for_ensure
        pull_for_ensure(from_url, root, spec, public_key or settings.current().public_key,
                        console if console is not None else _stderr(), allow_emulated=bool(allow_emulated))
        m = manifest_mod.load(root) if root.is_dir() else None
    built = rebuilt = False
    gone_stale = stale(m, allow_emulated, server_env)
    if gone_stale and rebuild:
        run.rebuild()
        m, built, rebuilt = manifest_mod.load(root), True, True
    gaps = unit_gaps(m, p, root)
    if gaps and not gone_stale:
        try:
            m = run.build(root, gaps)
        except BuildFailedError as e:
            return Ensured(cache_dir=root, units=len(p.units), built=True, rebuilt=rebuilt, incomplete=str(e),
                           problems=tuple(unit_gaps(e.manifest, p, root)))
        built = True
        gaps = unit_gaps(m, p, root)
    problems = (stale(m, allow_emulated, server_env) if built else gone_stale) + gaps
    # the loader's own decision, under the server's env: a cache it would refuse is no cache the server will hit
    t = trust.assess(root, trust.policy_from_env(require_manifest=True, allow_shared_writable=allow_writable,
                                                 public_key=public_key))
    problems += [r.text for r in t.refusals]
    if problems and rebuild and not rebuilt:   # damaged, foreign files, ...: start again from nothing
        run.rebuild()
        m, built, rebuilt = manifest_mod.load(root), True, True
        t = trust.assess(root, t.policy)
        problems = stale(m, allow_emulated, server_env) + unit_gaps(m, p, root) + [r.text for r in t.refusals]
    remedy = None
    if problems:
        remedy = ("the dir's owner must fix what the loader refuses (see verify)" if rebuilt
                  else REBUILD_HINT + ", or delete the dir")
    emulated = m is not None and m.fingerprint is not None and m.fingerprint.emulated
    return Ensured(cache_dir=root, units=len(p.units), built=built, rebuilt=rebuilt, problems=tuple(problems),
                   warnings=tuple(t.warnings), remedy=remedy, emulated=bool(emulated))


def _stderr() -> Console:
    from rich.console import Console
    return Console(stderr=True)
