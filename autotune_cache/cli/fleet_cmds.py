"""CLI commands past one machine: publish, fetch, ls (a cache registry, registry/) and fleet plan / fleet build (a
model x TP x GPU-type matrix on a Ray cluster, fleet/)."""
from __future__ import annotations

from .console import Column, add_output_args, err, out, print_json, print_table


def _spec(args):
    from .args import spec_from_args
    return spec_from_args(args)


def _public_key(args):
    from .. import settings
    return args.public_key or settings.current().public_key


def cmd_publish(args) -> int:
    from ..registry.publish import publish
    r = publish(args.dir, args.url, gpu_type=args.gpu_type, model=args.model)
    if args.json:
        print_json(r.as_dict())
    else:
        rec = r.record
        what = "already published" if r.already else "published"
        out.print(f"{what}: {rec.gpu_type} ({rec.fingerprint.gpu_name}), TP {','.join(map(str, rec.tp))}, "
                  f"{len(rec.units)} units, {rec.entries} entries, {rec.bundle_bytes} bytes"
                  f"{', signed by ' + rec.signed_by if rec.signed_by else ''} -> {r.url}/{rec.path}")
    return 0


def cmd_fetch(args) -> int:
    from ..registry import machine as machine_mod
    from ..registry.fetch import fetch, select
    spec = _spec(args)
    m = machine_mod.detect(args.gpu_name, args.capability, allow_emulated=args.allow_emulated)
    if args.dry_run:
        record, warnings = select(args.url, spec, m, _public_key(args))
        result = {"dry_run": True, "warnings": list(warnings), **record.summary()}
    else:
        result = fetch(args.url, args.dir, spec, m, public_key=_public_key(args)).as_dict()
    if args.json:
        print_json(result)
    else:
        for w in result["warnings"]:
            err.print(f"[yellow]warning[/yellow]: {w}")
        verb = "would fetch" if args.dry_run else f"fetched into {result['cache_dir']}"
        out.print(f"{verb}: bundle {result['bundle_sha256'][:12]} built on {result['gpu_name']} "
                  f"({result['gpu_type']}, sm {result['capability']}), {result['units']} units, "
                  f"{result['entries']} entries, {result['bundle_bytes']} bytes")
    return 0


def _seconds(iso: str) -> str:
    """The published time as the table shows it: to the second (the index keeps microseconds)."""
    head, dot, rest = iso.partition(".")
    return head + rest.lstrip("0123456789") if dot else iso


def cmd_ls(args) -> int:
    from ..errors import RegistryError
    from ..registry import index
    from ..registry.store import open_store
    found = index.scan(open_store(args.url))
    if found.info is None and not found.records:
        raise RegistryError(f"{found.url}: no registry there (nothing published yet)")
    rows = sorted((r.summary() for r in found.records),
                  key=lambda s: (s["gpu_type"], s["model"] or "", s["tp"], s["published"]))
    if args.json:
        print_json({"url": found.url, "signed": bool(found.info and found.info.signed), "bundles": rows,
                    "warnings": list(found.warnings)})
        return 0
    out.print(f"{found.url}: {len(rows)} bundles" + (" (signed registry)" if found.info and found.info.signed else ""),
              markup=False, soft_wrap=True)
    columns = [Column("bundle", key=True), Column("GPU type", key=True), Column("model", key=True),
               Column("TP", key=True), Column("GPU"), Column("sm"), Column("targets"), Column("python"),
               Column("triton"), Column("signed by"), Column("published"), Column("units", right=True),
               Column("entries", right=True), Column("bytes", right=True)]
    print_table(out, columns, [[s["bundle_sha256"][:12] + (" EMULATED" if s["emulated"] else ""), s["gpu_type"],
                                s["model"] or "-", ",".join(map(str, s["tp"])), s["gpu_name"] or "?",
                                s["capability"] or "?", ",".join(s["targets"]), s["python"], s["triton"],
                                s["signed_by"] or "-", _seconds(s["published"]), s["units"], s["entries"],
                                s["bundle_bytes"]]
                               for s in rows])
    for w in found.warnings:
        err.print(f"[yellow]warning[/yellow]: {w}")
    return 0


def cmd_fleet_plan(args) -> int:
    from ..fleet import matrix
    m = matrix.load(args.matrix)
    jobs = matrix.jobs(m)
    if args.json:
        print_json({"jobs": [j.as_dict() for j in jobs], "totals": matrix.totals(jobs)})
        return 0
    # console.print_table, not rich's Table: plain when piped, and at a narrow width each job stacks with its
    # identifying cells (job, GPU type, models) whole
    out.print("fleet plan: " + ", ".join(f"{k} {v}" for k, v in matrix.totals(jobs).items()), markup=False)
    rows = [[j.index, j.gpu_type, j.label, ",".join(str(t) for t in sorted({r.tp for r in j.rows})), len(j.units),
             j.keys, j.configs] for j in jobs]
    print_table(out, [Column("job", key=True), Column("GPU type", key=True), Column("models", key=True),
                      Column("TP"), Column("units", right=True), Column("keys", right=True),
                      Column("configs", right=True)], rows)
    return 0


def cmd_fleet_build(args) -> int:
    from ..fleet import matrix, ray_runner, report
    m = matrix.load(args.matrix)
    url = args.registry or m.registry
    if not url:
        from ..errors import SpecError
        raise SpecError("fleet build: give --registry URL (or `registry = \"...\"` in the matrix)")
    result = ray_runner.run(m, url, address=args.address, key=args.key,
                            on_done=None if args.json else lambda r: err.print(report.line(r)))
    if args.json:
        print_json(result.as_dict())
    else:
        out.print(report.table(result))
    return 0 if result.ok else 1


def add_commands(sub) -> None:
    from .args import add_model_args, name
    p = sub.add_parser("publish", help="export a cache and put it into a registry (file://, s3://, gs://, hf:// ...)")
    p.add_argument("dir")
    p.add_argument("url")
    p.add_argument("--gpu-type", type=name("--gpu-type"),
                   help="the GPU type it was built for, as Ray names it (default: from the manifest's GPU name, e.g. "
                        "H200)")
    p.add_argument("--model", type=name("--model"),
                   help="a label for `ls` (what fetch matches is the units the cache holds)")
    add_output_args(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("fetch", help="download the registry's bundle for this machine (or a named GPU) and import "
                                     "it into DIR")
    p.add_argument("url")
    p.add_argument("dir")
    add_model_args(p)
    _add_machine_args(p)
    p.add_argument("--dry-run", action="store_true", help="say which bundle, download nothing")
    add_output_args(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("ls", help="the bundles a registry holds")
    p.add_argument("url")
    add_output_args(p)
    p.set_defaults(func=cmd_ls)

    fleet = sub.add_parser("fleet", help="a model x TP x GPU-type matrix on a Ray cluster")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True, parser_class=type(fleet))
    p = fsub.add_parser("plan", help="the matrix's build jobs, units and configs (pure: no Ray, no GPU)")
    p.add_argument("matrix", help="a TOML file (docs/fleet.md)")
    add_output_args(p)
    p.set_defaults(func=cmd_fleet_plan)
    p = fsub.add_parser("build", help="build every job of the matrix as Ray tasks (one GPU each, on its GPU type), "
                                      "publishing each bundle as it finishes; skips what the registry holds")
    p.add_argument("matrix")
    p.add_argument("--registry", help="registry URL (default: the matrix's `registry`)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a running local cluster, else "
                                     "a new one on this machine)")
    p.add_argument("--key", metavar="KEY.pem", help="sign each cache before publishing (the path must exist on the "
                                                   "nodes)")
    add_output_args(p)
    p.set_defaults(func=cmd_fleet_build)


def _add_machine_args(p) -> None:
    p.add_argument("--gpu-name", help="fetch for this GPU (e.g. H200, or 'NVIDIA H200') instead of this machine's: "
                                      "an image build without a GPU")
    p.add_argument("--capability", help="fetch for this compute capability (e.g. 9.0)")
    p.add_argument("--public-key", metavar="PUB.pem",
                   help="require the bundle to be signed by this ed25519 key (default: AUTOTUNE_CACHE_PUBLIC_KEY; "
                        "required by a signed registry)")
    p.add_argument("--allow-emulated", action="store_true",
                   help="emulated builds (fake timings) may be chosen: tests only")
