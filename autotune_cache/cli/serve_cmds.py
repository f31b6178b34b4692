"""CLI commands for serving hosts: ensure (init containers, entrypoints)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BuildFailedError, NoGPUError


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


def cmd_ensure(args) -> int:
    from ..cache import fingerprint, manifest as manifest_mod, trust
    from .console import err, out
    from .args import spec_from_args
    from ..builder.orchestrator import Build, prepare_cache_dir
    from ..builder.plan import plan as make_plan

    spec = spec_from_args(args)
    p = make_plan(spec)
    cache_dir = Path(spec.cache_dir).expanduser().resolve()
    m = manifest_mod.load(cache_dir) if cache_dir.is_dir() else None
    gaps = unit_gaps(m, p, cache_dir)
    if args.from_url:   # the registry's cache when this one is missing or stale (registry/pull.py)
        from ..registry.pull import pull_for_ensure
        pull_for_ensure(args.from_url, cache_dir, spec, args.public_key or os.environ.get("AUTOTUNE_CACHE_PUBLIC_KEY"),
                        err)
        m = manifest_mod.load(cache_dir) if cache_dir.is_dir() else None
        gaps = unit_gaps(m, p, cache_dir)
    built = False
    if gaps:
        err.print(f"{len(gaps)} of {len(p.units)} units to build: " + "; ".join(gaps))
        try:
            m = Build(p, prepare_cache_dir(cache_dir), console=err, progress=not args.no_progress).run()
        except NoGPUError as e:
            raise NoGPUError(f"the cache lacks {len(gaps)} units and there is no GPU to build them ({e})") from None
        except BuildFailedError as e:
            err.print(f"[red]ensure: build incomplete[/red]: {e}")
            return 1
        built = True
        gaps = unit_gaps(m, p, cache_dir)
    problems = list(gaps)
    if m is not None and m.fingerprint is not None:
        problems += fingerprint.misses_here(m.fingerprint, query_gpu=True)[0]
    # the loader's own decision, under the server's env: a cache it would refuse is no cache the server will hit
    t = trust.assess(cache_dir, trust.policy_from_env(require_manifest=True,
                                                      allow_shared_writable=args.allow_writable or None,
                                                      public_key=args.public_key))
    problems += [r.text for r in t.refusals]
    result = {"cache_dir": str(cache_dir), "units": len(p.units), "built": built, "ok": not problems,
              "problems": problems, "warnings": list(t.warnings)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for w in t.warnings:
            err.print(f"[yellow]warning[/yellow]: {w}")
        if problems:
            err.print("[red]ensure: the server would miss[/red]:\n  " + "\n  ".join(problems))
        else:
            out.print(f"ensure: {len(p.units)} units present and intact in {cache_dir}"
                      + (" (built now)" if built else "") + "; the server will hit")
    return 0 if not problems else 1


def add_commands(sub) -> None:
    from ..builder.spec import MAX_GPUS
    from .args import add_build_args, add_model_args
    p = sub.add_parser("ensure", help="build what the cache lacks, verify the rest; exit 0 only if the server will hit")
    add_model_args(p)
    p.add_argument("--cache-dir", required=True)
    add_build_args(p)
    p.add_argument("--gpus", type=int, default=None,
                   help=f"build over N GPUs, one child each (default: every visible GPU; an init container sharing "
                        f"its host with a running server should name the ones it may use; at most {MAX_GPUS})")
    p.add_argument("--allow-writable", action="store_true",
                   help="do not fail when users other than the owner can write the dir or a parent (as the server's "
                        "AUTOTUNE_CACHE_ALLOW_WRITABLE=1)")
    p.add_argument("--public-key", metavar="PUB.pem",
                   help="require manifest.sig to be a valid signature by this ed25519 public key (default: the "
                        "server's AUTOTUNE_CACHE_PUBLIC_KEY)")
    p.add_argument("--from", dest="from_url", metavar="URL",
                   help="fetch the registry's cache (autotune-cache publish) when this one is missing or stale, "
                        "before building; unreachable: build instead (AUTOTUNE_CACHE_STRICT=1: exit 2)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ensure)


