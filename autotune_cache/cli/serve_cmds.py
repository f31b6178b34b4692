"""CLI commands for serving hosts: ensure (init containers, entrypoints).

ensure: 0 when the server will hit (every planned unit built and intact, a cache this machine's Triton keys the
same way, one the loader trusts, not emulated unless allowed), 1 when it would miss (each reason, and what to do),
2 a mistake. A cache for another environment (other Triton, Python, ptxas, GPU, env vars) is never built into:
without --rebuild, exit 1 naming the remedy; with --rebuild, a fresh cache is built beside it and swapped in.
The server's cache-invalidating env vars are ensure's own, with those --triton-env names in their place (an init
container without the server's env): the build runs with them, and the cache is checked against them.
"""
from __future__ import annotations

from ..amounts import count
from .console import add_command, add_output_args, err, out, print_json, progress_mode, report_error


def cmd_ensure(args) -> int:
    from ..operations import ensure
    from .args import spec_from_args

    r = ensure(spec_from_args(args), rebuild=args.rebuild, allow_emulated=args.allow_emulated or None,
               allow_writable=args.allow_writable or None, public_key=args.public_key, from_url=args.from_url,
               console=err, progress=progress_mode(args), notes=not (args.quiet or args.json))
    if r.incomplete is not None:
        return report_error(f"ensure: build incomplete: {r.incomplete}", 1)
    if args.json:
        print_json(r.as_dict())
    else:
        for w in r.warnings:
            err.print(f"[yellow]warning[/yellow]: {w}")
        if r.problems:
            err.print("[red]ensure: the server would miss[/red]:\n  " + "\n  ".join(r.problems))
            err.print(f"to fix: {r.remedy}")
        else:
            out.print(f"ensure: {count(r.units, 'unit')} present and intact in {r.cache_dir}"
                      + (" (rebuilt now)" if r.rebuilt else " (built now)" if r.built else "") + "; the server will hit"
                      + (" (emulated build: arbitrary winners, allowed)" if r.emulated else ""))
    return 0 if r.ok else 1


def add_commands(sub) -> None:
    add_ensure(sub)


def add_ensure(sub) -> None:
    from ..builder.spec import MAX_GPUS
    from .args import add_build_args, add_model_args, existing_file
    p = add_command(sub, "ensure", "build what the cache lacks, verify the rest; exit 0 only if the server will hit",
                    details="For init containers and entrypoints: the one command before a server starts. A cache "
                            "for another environment (Triton, Python, ptxas, GPU, env vars) is never built into: "
                            "exit 1 naming the remedy, or with --rebuild a fresh cache swapped in. With --from it "
                            "first fetches the registry's cache when this one is missing or stale.",
                    examples=("autotune-cache ensure --model qwen3.5-9b --tp 2 --cache-dir /cache/gdn",
                              "autotune-cache ensure --model qwen3.5-9b --cache-dir /cache/gdn --from s3://bucket/reg",
                              "autotune-cache ensure --cache-dir /cache/gdn --rebuild --gpus 1"))
    add_model_args(p)
    p.add_argument("--cache-dir", required=True, metavar="DIR",
                   help="the cache dir the server will read (its AUTOTUNE_CACHE_DIR); created when absent")
    add_build_args(p)
    p.add_argument("--gpus", type=int, default=None, metavar="N",
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
    p.add_argument("--public-key", metavar="PUB.pem", type=existing_file,
                   help="require manifest.sig to be a valid signature by this ed25519 public key (default: the "
                        "server's AUTOTUNE_CACHE_PUBLIC_KEY)")
    p.add_argument("--from", dest="from_url", metavar="URL",
                   help="fetch the registry's cache (autotune-cache publish) when this one is missing or stale, "
                        "before building; unreachable: build instead (AUTOTUNE_CACHE_STRICT=1: exit 2)")
    add_output_args(p, progress=True)
    p.set_defaults(func=cmd_ensure, on_interrupt="finished units are kept")
