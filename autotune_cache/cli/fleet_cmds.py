"""CLI commands past one machine: publish, fetch, ls (a cache registry, registry/) and fleet plan / fleet build (a
model x TP x GPU-type matrix on a Ray cluster, fleet/)."""
from __future__ import annotations

from ..amounts import count, size
from .console import Column, add_command, add_output_args, err, out, print_json, print_table


def _spec(args):
    from .args import spec_from_args
    return spec_from_args(args)


def _public_key(args):
    from .. import settings
    return args.public_key or settings.current().public_key


def cmd_publish(args) -> int:
    from ..registry.publish import publish
    r = publish(args.dir, args.url, gpu_type=args.gpu_type, model=args.model, force=args.force)
    if args.json:
        print_json(r.as_dict())
    else:
        for w in r.warnings:
            err.print(f"[yellow]warning[/yellow]: {w}", markup=True)
        if r.swept:
            err.print(f"removed {len(r.swept)} abandoned writes of earlier publishes", markup=False)
        rec = r.record
        what = "already published" if r.already else "published"
        out.print(f"{what}: {rec.gpu_type} ({rec.fingerprint.gpu_name}), TP {','.join(map(str, rec.tp))}, "
                  f"{count(len(rec.units), 'unit')}, {count(rec.entries, 'entry', 'entries')}, {size(rec.bundle_bytes)}"
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
                  f"({result['gpu_type']}, sm {result['capability']}), {count(result['units'], 'unit')}, "
                  f"{count(result['entries'], 'entry', 'entries')}, {size(result['bundle_bytes'])}")
    return 0


def _seconds(iso: str) -> str:
    """The published time as the table shows it: to the second (the index keeps microseconds)."""
    head, dot, rest = iso.partition(".")
    return head + rest.lstrip("0123456789") if dot else iso


def cmd_ls(args) -> int:
    from .. import settings
    from ..errors import RegistryError
    from ..registry import index
    from ..registry.store import open_store, sweep
    store = open_store(args.url)
    found = index.scan(store)
    if found.info is None and not found.records and not store.exists():
        raise RegistryError(f"{found.url}: no registry there (nothing published yet)")
    swept = sweep(store, settings.current().registry_stale_age) if args.gc else []
    rows = sorted((r.summary() for r in found.records),
                  key=lambda s: (s["gpu_type"], s["model"] or "", s["tp"], s["published"]))
    if args.json:
        print_json({"url": found.url, "signed": bool(found.info and found.info.signed), "bundles": rows,
                    "warnings": list(found.warnings), **({"swept": [p.as_dict() for p in swept]} if args.gc else {})})
        return 0
    if args.gc:
        err.print(f"removed {count(len(swept), 'abandoned write')} (older than "
                  f"{settings.current().registry_stale_age:g} s)", markup=False)
    signed = " (signed registry)" if found.info and found.info.signed else ""
    out.print(f"{found.url}: {count(len(rows), 'bundle')}{signed}", markup=False, soft_wrap=True)
    columns = [Column("bundle", key=True), Column("GPU type", key=True), Column("model", key=True),
               Column("TP", key=True), Column("GPU"), Column("sm"), Column("targets"), Column("python"),
               Column("triton"), Column("signed by"), Column("published"), Column("units", right=True),
               Column("entries", right=True), Column("size", right=True)]
    if rows:
        print_table(out, columns, [[s["bundle_sha256"][:12] + (" EMULATED" if s["emulated"] else ""), s["gpu_type"],
                                    s["model"] or "-", ",".join(map(str, s["tp"])), s["gpu_name"] or "?",
                                    s["capability"] or "?", ",".join(s["targets"]), s["python"], s["triton"],
                                    s["signed_by"] or "-", _seconds(s["published"]), s["units"], s["entries"],
                                    size(s["bundle_bytes"])]
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
    p = add_command(sub, "publish", "export a cache and put it into a registry (file://, s3://, gs://, hf:// ...)",
                    details="A registry is a URL (any fsspec store) holding bundles and one index entry per bundle, "
                            "never rewritten, so publishers may race. fetch, `ensure --from` and the vLLM plugin "
                            "pick the bundle that fits a machine.",
                    examples=("autotune-cache publish ~/gdn-cache s3://bucket/gdn-registry",
                              "autotune-cache publish ~/gdn-cache file:///shared/registry --gpu-type H200 "
                              "--model qwen3.5-9b"))
    p.add_argument("dir", metavar="DIR", help="the cache dir to publish (built by `autotune-cache build`)")
    p.add_argument("url", metavar="URL", help="the registry: file://, s3://, gs://, hf:// ... (created if absent)")
    p.add_argument("--gpu-type", metavar="TYPE", type=name("--gpu-type"),
                   help="the GPU type it was built for, as Ray names it (default: from the manifest's GPU name, e.g. "
                        "H200)")
    p.add_argument("--model", metavar="LABEL", type=name("--model"),
                   help="a label for `ls` (what fetch matches is the units the cache holds)")
    p.add_argument("--force", action="store_true", help="publish under --gpu-type even if the cache was built on "
                                                        "another GPU")
    add_output_args(p)
    p.set_defaults(func=cmd_publish)

    p = add_command(sub, "fetch", "download the registry's bundle for this machine (or a named GPU) and import it "
                                  "into DIR",
                    details="Plans the model as `plan` does and takes the newest bundle that holds every planned "
                            "unit and whose disk keys match this machine (Triton, Python, ptxas, env vars), built on "
                            "this GPU type if one is, else on another GPU of the same compute capability in NVIDIA's "
                            "table (with a warning). With a public key, only the bundles it signed are taken. The "
                            "bundle's manifest is checked against its index entry and the request, and its "
                            "signature before a file is written.",
                    examples=("autotune-cache fetch s3://bucket/gdn-registry ~/gdn-cache --model qwen3.5-9b --tp 2",
                              "# in an image build, without a GPU",
                              "autotune-cache fetch s3://bucket/gdn-registry /cache --gpu-name H200",
                              "autotune-cache fetch s3://bucket/gdn-registry ~/gdn-cache --dry-run"))
    p.add_argument("url", metavar="URL", help="the registry (as given to publish)")
    p.add_argument("dir", metavar="DIR", help="an absent or empty dir to import the bundle into")
    add_model_args(p)
    _add_machine_args(p)
    p.add_argument("--dry-run", action="store_true", help="say which bundle, download nothing")
    add_output_args(p)
    p.set_defaults(func=cmd_fetch)

    p = add_command(sub, "ls", "list the bundles a registry holds",
                    details="One row per bundle: GPU type, model label, TP degrees, the build's GPU, Python and "
                            "Triton, its signer, when it was published and its size.",
                    examples=("autotune-cache ls s3://bucket/gdn-registry",
                              "autotune-cache ls file:///shared/registry --json"))
    p.add_argument("url", metavar="URL", help="the registry (as given to publish)")
    p.add_argument("--gc", action="store_true", help="also remove what killed publishes left (older than "
                                                     "AUTOTUNE_CACHE_REGISTRY_STALE_AGE)")
    add_output_args(p)
    p.set_defaults(func=cmd_ls)

    fleet = add_command(sub, "fleet", "build a model x TP x GPU-type matrix on a Ray cluster",
                        details="The matrix is a TOML file (docs/fleet.md): models, TP degrees, GPU types and the "
                                "registry. `fleet plan` lists its jobs; `fleet build` runs each as a Ray task on its "
                                "GPU type and publishes each cache as it finishes.",
                        examples=("autotune-cache fleet plan matrix.toml",
                                  "autotune-cache fleet build matrix.toml --registry s3://bucket/gdn-registry"))
    fsub = fleet.add_subparsers(dest="fleet_command", required=True, parser_class=type(fleet), metavar="SUBCOMMAND",
                                title="subcommands")
    p = add_command(fsub, "plan", "list the matrix's build jobs, units and configs (pure: no Ray, no GPU)",
                    examples=("autotune-cache fleet plan matrix.toml", "autotune-cache fleet plan matrix.toml --json"))
    p.add_argument("matrix", metavar="MATRIX", help="the matrix, a TOML file (docs/fleet.md)")
    add_output_args(p)
    p.set_defaults(func=cmd_fleet_plan)
    p = add_command(fsub, "build", "build every job of the matrix as Ray tasks, publishing each cache as it "
                                   "finishes",
                    details="One Ray task per job, with one GPU of its type; a job whose bundle the registry already "
                            "holds is skipped. Exit 1 when a job failed (the report names it).",
                    examples=("autotune-cache fleet build matrix.toml --registry s3://bucket/gdn-registry",
                              "autotune-cache fleet build matrix.toml --address ray://head:10001 --key key.pem"))
    p.add_argument("matrix", metavar="MATRIX", help="the matrix, a TOML file (docs/fleet.md)")
    p.add_argument("--registry", metavar="URL", help="registry URL (default: the matrix's `registry`)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a running local cluster, else "
                                     "a new one on this machine)")
    p.add_argument("--key", metavar="KEY.pem", help="sign each cache before publishing (the path must exist on the "
                                                   "nodes)")
    add_output_args(p)
    p.set_defaults(func=cmd_fleet_build)


def _add_machine_args(p) -> None:
    from .args import existing_file
    p.add_argument("--gpu-name", metavar="NAME",
                   help="fetch for this GPU (e.g. H200, or 'NVIDIA H200') instead of this machine's: an image build "
                        "without a GPU; a GPU not in NVIDIA's table needs --capability too")
    p.add_argument("--capability", metavar="X.Y",
                   help="fetch for this compute capability (e.g. 9.0); must agree with the table for a known "
                        "--gpu-name")
    p.add_argument("--public-key", metavar="PUB.pem", type=existing_file,
                   help="require the bundle to be signed by this ed25519 key (default: AUTOTUNE_CACHE_PUBLIC_KEY; "
                        "required by a signed registry)")
    p.add_argument("--allow-emulated", action="store_true",
                   help="emulated builds (fake timings) may be chosen: tests only")
