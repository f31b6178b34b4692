"""CLI commands for serving hosts: ensure (init containers, entrypoints).

ensure: 0 when the server will hit (every planned unit built and intact, a cache this machine's Triton keys the
same way, one the loader trusts, not emulated unless allowed), 1 when it would miss (each reason, and what to do),
2 a mistake. A cache for another environment (other Triton, Python, ptxas, GPU, env vars) is never built into:
without --rebuild, exit 1 naming the remedy; with --rebuild, a fresh cache is built beside it and swapped in.
The server's cache-invalidating env vars are ensure's own, with those --triton-env names in their place (an init
container without the server's env): the build runs with them, and the cache is checked against them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import BuildFailedError, NoGPUError
from .console import add_output_args, err, out, print_json, progress_mode, report_error

REBUILD_HINT = "run `autotune-cache ensure ... --rebuild` (builds a fresh cache beside it and swaps it in)"


def unit_gaps(manifest, plan, cache_dir: Path) -> list[str]:
    """Why each planned unit would not hit: missing, failed, or an entry file gone or changed."""
    gaps = []
    for unit in plan.units:
        rec = manifest.units.get(unit.id) if manifest else None
        if rec is None or rec.status != "done":
            gaps.append(f"{unit.id}: {'not built' if rec is None else rec.status}")
        elif (name := manifest.damaged_entry(rec, cache_dir)) is not None:
            gaps.append(f"{unit.id}: entry {name} missing or changed")
    return gaps


def _build(p, cache_dir: Path, args, gaps: list[str]):
    """Build the plan's missing units into cache_dir; a dir this call created is removed when the build cannot
    start (no GPU), so a mistake leaves nothing."""
    from ..builder.orchestrator import Build, prepare_cache_dir
    from .build_cmds import found, leave_as_found
    before = found(cache_dir)
    if not args.quiet:
        err.print(f"{len(gaps)} of {len(p.units)} units to build in {cache_dir}: " + "; ".join(gaps))
    try:
        return Build(p, prepare_cache_dir(cache_dir), console=err, progress=progress_mode(args)).run()
    except NoGPUError as e:
        leave_as_found(cache_dir, before)
        raise NoGPUError(f"the cache lacks {len(gaps)} units and there is no GPU to build them ({e})") from None


def _stale(m, allow_emulated: bool | None, env: dict[str, str] | None) -> list[str]:
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


def _rebuild(p, cache_dir: Path, args) -> None:
    """A fresh cache beside cache_dir, relocated for its path and swapped in (cache/swap.py)."""
    from ..cache import swap
    fresh = swap.fresh_dir_beside(cache_dir)
    if not args.quiet:
        err.print(f"rebuilding {cache_dir} from scratch in {fresh}, then swapping it in")
    try:
        _build(p, fresh, args, [f"{u.id}: rebuild" for u in p.units])
        swap.relocate(fresh, cache_dir)
        swap.swap_in(fresh, cache_dir)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)   # a failed rebuild leaves the old cache as it was


def cmd_ensure(args) -> int:
    from ..autotuner import versions
    from ..builder import triton_env
    from ..builder.plan import plan as make_plan
    from ..cache import manifest as manifest_mod
    from ..cache import trust
    from .args import spec_from_args

    spec = spec_from_args(args)
    p = make_plan(spec)
    versions.require()   # before a fingerprint is read or a unit built: an unsupported Triton can do neither
    # --triton-env: the server's values, what the build runs with and what the cache is checked against
    server_env = triton_env.check(dict(spec.triton_env))
    assert spec.cache_dir is not None   # --cache-dir is required
    cache_dir = Path(spec.cache_dir).expanduser().resolve()
    if cache_dir.exists() and not cache_dir.is_dir():
        return report_error(f"{cache_dir} is a file, not a cache dir: give a directory (--cache-dir)")
    allow_emulated = args.allow_emulated or None   # None: env AUTOTUNE_CACHE_ALLOW_EMULATED (verify.emulated_problem)
    m = manifest_mod.load(cache_dir) if cache_dir.is_dir() else None
    if args.from_url:   # the registry's cache when this one is missing or stale (registry/pull.py)
        from .. import settings
        from ..registry.pull import pull_for_ensure
        pull_for_ensure(args.from_url, cache_dir, spec, args.public_key or settings.current().public_key,
                        err)
        m = manifest_mod.load(cache_dir) if cache_dir.is_dir() else None
    built = rebuilt = False
    stale = _stale(m, allow_emulated, server_env)
    if stale and args.rebuild:
        _rebuild(p, cache_dir, args)
        m, built, rebuilt = manifest_mod.load(cache_dir), True, True
    gaps = unit_gaps(m, p, cache_dir)
    if gaps and not stale:
        try:
            m = _build(p, cache_dir, args, gaps)
        except BuildFailedError as e:
            return report_error(f"ensure: build incomplete: {e}", 1)
        built = True
        gaps = unit_gaps(m, p, cache_dir)
    problems = (_stale(m, allow_emulated, server_env) if built else stale) + gaps
    # the loader's own decision, under the server's env: a cache it would refuse is no cache the server will hit
    t = trust.assess(cache_dir, trust.policy_from_env(require_manifest=True,
                                                      allow_shared_writable=args.allow_writable or None,
                                                      public_key=args.public_key))
    problems += [r.text for r in t.refusals]
    if problems and args.rebuild and not rebuilt:   # damaged, foreign files, ...: start again from nothing
        _rebuild(p, cache_dir, args)
        m, built, rebuilt = manifest_mod.load(cache_dir), True, True
        t = trust.assess(cache_dir, t.policy)
        problems = _stale(m, allow_emulated, server_env) + unit_gaps(m, p, cache_dir) + [r.text for r in t.refusals]
    remedy = None
    if problems:
        remedy = ("the dir's owner must fix what the loader refuses (see verify)" if rebuilt
                  else REBUILD_HINT + ", or delete the dir")
    result = {"cache_dir": str(cache_dir), "units": len(p.units), "built": built, "rebuilt": rebuilt,
              "ok": not problems, "problems": problems, "warnings": list(t.warnings), "remedy": remedy}
    if args.json:
        print_json(result)
    else:
        for w in t.warnings:
            err.print(f"[yellow]warning[/yellow]: {w}")
        if problems:
            err.print("[red]ensure: the server would miss[/red]:\n  " + "\n  ".join(problems))
            err.print(f"to fix: {remedy}")
        else:
            emulated = m is not None and m.fingerprint is not None and m.fingerprint.emulated
            out.print(f"ensure: {len(p.units)} units present and intact in {cache_dir}"
                      + (" (rebuilt now)" if rebuilt else " (built now)" if built else "") + "; the server will hit"
                      + (" (emulated build: arbitrary winners, allowed)" if emulated else ""))
    return 0 if not problems else 1


def add_commands(sub) -> None:
    add_ensure(sub)


def add_ensure(sub) -> None:
    from ..builder.spec import MAX_GPUS
    from .args import add_build_args, add_model_args
    p = sub.add_parser("ensure", help="build what the cache lacks, verify the rest; exit 0 only if the server will hit")
    add_model_args(p)
    p.add_argument("--cache-dir", required=True)
    add_build_args(p)
    p.add_argument("--gpus", type=int, default=None,
                   help=f"build over N GPUs, one child each (default: every visible GPU; an init container sharing "
                        f"its host with a running server should name the ones it may use; at most {MAX_GPUS})")
    p.add_argument("--rebuild", action="store_true",
                   help="when the cache cannot serve as it is (built for another Triton/Python/GPU, damaged, "
                        "refused), build a fresh one beside it and swap it in atomically (needs a GPU and a "
                        "writable parent dir); without it such a cache exits 1 and is left alone")
    p.add_argument("--allow-writable", action="store_true",
                   help="do not fail when users other than the owner can write the dir or a parent (as the server's "
                        "AUTOTUNE_CACHE_ALLOW_WRITABLE=1)")
    p.add_argument("--allow-emulated", action="store_true",
                   help="accept a cache built with --emulate (fake timings, arbitrary winners; tests only; env "
                        "AUTOTUNE_CACHE_ALLOW_EMULATED=1)")
    p.add_argument("--public-key", metavar="PUB.pem",
                   help="require manifest.sig to be a valid signature by this ed25519 public key (default: the "
                        "server's AUTOTUNE_CACHE_PUBLIC_KEY)")
    p.add_argument("--from", dest="from_url", metavar="URL",
                   help="fetch the registry's cache (autotune-cache publish) when this one is missing or stale, "
                        "before building; unreachable: build instead (AUTOTUNE_CACHE_STRICT=1: exit 2)")
    add_output_args(p, progress=True)
    p.set_defaults(func=cmd_ensure, on_interrupt="finished units are kept")
