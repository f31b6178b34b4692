"""CLI commands that read or maintain a cache directory: inspect, verify, prune, export, import, merge, sign.

Each command is a view of a frozen record (scan.CacheScan, verify.Verification, prune.PrunePlan, ...): `--json`
prints the record, the default a table of it (console.print_table: stacked at a narrow width). Exit codes: 0 fine,
1 verify found problems, 2 a usage error or a cache dir/bundle that cannot be used (one line on stderr). A path the
user gives is checked before anything is written (`_writable_dir`, `_new_file`): a mistake creates nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..cache import location
from ..cache.scan import ROLES, CacheScan, fingerprint_text, human_size
from ..errors import CacheDirError
from .args import existing_file
from .console import Column, add_output_args, err, out, print_item, print_json, print_table


def _writable_dir(d, what: str) -> None:
    """CacheDirError unless `d` is a directory this user may write (read-only mount, another owner's files)."""
    path = location.normalize(d)
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise CacheDirError(f"{path} is read-only here: {what} writes it; run it where the cache is writable (as "
                            "its owner, or on a writable copy)")


def _new_path(p, what: str) -> Path:
    """`p` for a file or dir a command creates: its parent must exist (nothing is created on the way), and it must
    not be a directory where a file is expected (for `what` == "bundle")."""
    path = Path(p).expanduser()
    if what == "bundle" and path.is_dir():
        raise CacheDirError(f"{path} is a directory: name the bundle file, e.g. {path / 'gdn-cache.tar.gz'}")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise CacheDirError(f"{parent}: no such directory (the {what}'s parent must exist; create it first)")
    return path


# -- inspect --------------------------------------------------------------------------------------------------
def print_scan(s: CacheScan, console, shown: str | None = None) -> None:
    """The table view of a scan; `shown`: the dir as the user named it (the JSON has the absolute path)."""
    m = s.manifest
    console.print(f"[bold]cache[/bold] {shown or s.root}")
    if m is None:
        console.print("manifest: none (a plain Triton cache dir: winners' binaries and fingerprint unknown)")
    else:
        console.print(f"manifest: schema {m.schema_version}, autotune-cache {m.tool_version}, created {m.created}, "
                      f"updated {m.updated}, {len(m.units)} units, digest {m.digest()[:16]}")
    console.print(f"fingerprint: {fingerprint_text(m)}")
    rows = []
    with_dirs = {c.kernel for c in s.compiled}
    for r in s.autotune:
        bins = s.binaries_of(r)
        # "?": not recorded and its kernel has compiled dirs here (one may be it); "none": nothing compiled here
        winner_bin = (human_size(sum(c.size for c in bins)) if bins else "pruned" if r.binaries
                      else "?" if r.kernel in with_dirs else "none")
        rows.append([r.kernel + ("" if r.in_manifest or m is None else " (unlisted)"), r.key_text, r.winner_text,
                     f"{r.best:.4g}", "-" if r.margin is None else f"{100 * r.margin:.1f}%", r.configs,
                     human_size(r.size), winner_bin])
    print_table(console, [Column("kernel", key=True), Column("key", key=True), Column("winner"),
                          Column("best ms", right=True), Column("margin", right=True), Column("configs", right=True),
                          Column("json", right=True), Column("winner bin", right=True)], rows)
    t = s.totals
    dirs = t["compiled_dirs"]
    console.print(f"[bold]totals[/bold]: {t['entries']} entries, {t['kernels']} kernels; autotune JSON "
                  f"{human_size(t['autotune_bytes'])}; winners' binaries {human_size(t['winner_binaries_bytes'])} "
                  f"({dirs['winner']} dirs); losers' binaries {human_size(t['loser_binaries_bytes'])} "
                  f"({dirs['loser']} dirs); all {human_size(t['bytes'])}")
    if dirs["unknown"]:
        console.print(f"  {dirs['unknown']} compiled dirs ({human_size(t['unknown_binaries_bytes'])}) are "
                      f"winners or losers, unknown: {ROLES['unknown']}")
    if dirs["untuned"]:
        console.print(f"  {dirs['untuned']} compiled dirs ({human_size(t['untuned_binaries_bytes'])}) of kernels "
                      "without an autotune entry")
    if t["other_bytes"]:
        console.print(f"  other files (Triton's launcher .so, leftovers): {human_size(t['other_bytes'])}")
    if t["entries_without_binaries"]:
        console.print(f"  {t['entries_without_binaries']} entries have no compiled winner on disk: the server "
                      "compiles each once (no benchmark)")
    if m is not None:
        console.print(f"manifest vs disk: {len(s.unlisted)} autotune files on disk not in the manifest, "
                      f"{len(s.missing)} manifest entries not on disk")
        for r in s.unlisted:
            console.print(f"  on disk only: {r.file}")
        for f in s.missing:
            console.print(f"  manifest only: {f}")
    moved = sum(1 for c in s.compiled if c.foreign)
    if moved:
        console.print(f"[yellow]{moved} compiled kernels list their files at another path (moved without "
                      "`autotune-cache import`): the server recompiles them[/yellow]")
    for w in s.warnings:
        console.print(f"[yellow]warning[/yellow]: {w.path}: {w.message}")


def cmd_inspect(args) -> int:
    from ..cache.scan import scan
    s = scan(args.dir)
    if args.json:
        print_json(s.as_dict())
    else:
        print_scan(s, out, args.dir)
    return 0


# -- verify ---------------------------------------------------------------------------------------------------
def cmd_verify(args) -> int:
    from ..cache.scan import scan
    from ..cache.verify import verify
    plan = None
    if args.model or args.config:
        from ..builder.plan import plan as make_plan
        from .args import spec_from_args
        plan = make_plan(spec_from_args(args))
    s = scan(args.dir)
    v = verify(s, plan, allow_writable=args.allow_writable, public_key=args.public_key,
               allow_emulated=args.allow_emulated or None)
    if args.json:
        print_json(v.as_dict())
        return 0 if v.ok else 1
    console = out
    console.print(f"[bold]verify[/bold] {args.dir}")
    for c in v.checks:
        console.print(f"{c.name}: " + ("[green]OK[/green]" if c.ok else "[red]FAIL[/red]"))
        for p in c.problems:
            print_item(console, f"problem: {p}")
            if args.quiet:
                print_item(err, f"{c.name}: {p}", 0)
        for n in c.notes:
            print_item(console, f"note: {n}")
    if plan is None:
        console.print("coverage: not checked (give --model or --config, and --tp)")
    console.print("[green]all checks passed[/green]" if v.ok else "[red]verify failed[/red]")
    return 0 if v.ok else 1


def _carry_out(computed, args) -> bool:
    """Execute a computed prune or merge plan unless --dry-run or it changes nothing (then nothing is written, not
    even the manifest); True when --json printed it (nothing else to show)."""
    if not args.dry_run and not computed.empty:
        computed.execute()
    if args.json:
        print_json(dict(computed.as_dict(), dry_run=args.dry_run))
    return args.json


# -- prune ----------------------------------------------------------------------------------------------------
def cmd_prune(args) -> int:
    from ..cache.prune import plan_prune
    from ..cache.scan import scan
    p = plan_prune(scan(args.dir), all_binaries=args.all_binaries)
    if not p.empty and not args.dry_run:
        _writable_dir(p.root, "prune")
    if _carry_out(p, args):
        return 0
    console = out
    if p.empty:
        console.print(f"prune {p.root}: nothing to delete; nothing changed")
        return 0
    verb = "would free" if args.dry_run else "freed"
    by_reason: dict[str, tuple[int, int]] = {}   # reason -> (deletions, bytes)
    for d in p.deletions:
        reason = d.reason.split(":")[0]
        n, b = by_reason.get(reason, (0, 0))
        by_reason[reason] = (n + 1, b + d.bytes)
    for reason, (n, b) in sorted(by_reason.items()):
        console.print(f"  {n:5d} x {reason}: {human_size(b)}")
    for f in p.dropped_entries:
        console.print(f"  manifest entry dropped: {f}")
    if p.kept_unknown:
        console.print(f"  kept every compiled kernel of {', '.join(p.kept_unknown)}: their winners' binaries were "
                      "not recorded (manifest older than this tool's binaries field); --all-binaries drops them all")
    console.print(f"prune {p.root}: {verb} {human_size(p.bytes_freed)} ({p.bytes_freed} bytes) in "
                  f"{len(p.deletions)} paths" + (" (dry run: nothing deleted)" if args.dry_run else ""))
    return 0


# -- export / import ------------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    from ..cache.bundle import export
    r = export(args.dir, _new_path(args.bundle, "bundle"))
    if args.json:
        print_json(r.as_dict())
        return 0
    out.print(f"exported {r.files} files ({human_size(r.bytes)}) to {r.bundle} ({human_size(r.bundle_bytes)}), "
              f"manifest digest {r.manifest_digest[:16]}"
              + (f"; {len(r.left_out)} files not in the manifest left out" if r.left_out else ""))
    return 0


def cmd_import(args) -> int:
    from ..cache.bundle import import_bundle
    from ..errors import BundleError
    if Path(args.bundle).expanduser().is_dir():   # before anything is made: "no such bundle file" misled here
        raise BundleError(f"{args.bundle} is a directory, not a bundle file (`autotune-cache export DIR B.tgz` "
                          "writes one)")
    r = import_bundle(args.bundle, args.dir, public_key=args.public_key)   # dirs it creates go on any failure
    if args.json:
        print_json(r.as_dict())
        return 0
    out.print(f"imported {r.files} files ({human_size(r.bytes)}) into {r.cache_dir}; {r.groups_rewritten} "
              f"compiled-kernel groups now point there (manifest digest {r.manifest_digest[:16]} checked"
              + (", signature checked" if args.public_key else "") + ")")
    out.print(f"serve with: AUTOTUNE_CACHE_DIR={r.cache_dir} (the vLLM plugin, install()), or "
              f"TRITON_CACHE_DIR={r.cache_dir} TRITON_CACHE_AUTOTUNING=1")
    return 0


# -- sign -----------------------------------------------------------------------------------------------------
def cmd_sign(args) -> int:
    from ..cache.signing import sign
    _writable_dir(args.dir, "sign")
    sig = sign(args.dir, args.key)
    if args.json:
        print_json(sig)
        return 0
    out.print(f"signed {args.dir}: {args.dir.rstrip('/')}/manifest.sig, ed25519 key {sig['key_id']}, manifest "
              f"digest {sig['manifest_digest'][:16]} (stays valid after export/import)")
    return 0


# -- merge ----------------------------------------------------------------------------------------------------
def cmd_merge(args) -> int:
    from ..cache.merge import plan_merge
    p = plan_merge(args.dirs, _new_path(args.into, "--into dir"))
    if not p.empty and not args.dry_run:
        _writable_dir(p.into, "merge")
    if _carry_out(p, args):
        return 0
    console = out
    for w in p.warnings:
        console.print(f"[yellow]warning[/yellow]: {w}")
    for c in p.conflicts:
        console.print(f"[yellow]conflict[/yellow]: {c}")
    if p.empty:
        console.print(f"merge into {p.into}: every file is there already ({p.skipped}); nothing changed")
        return 0
    verb = "would copy" if args.dry_run else "copied"
    console.print(f"merge into {p.into}: {verb} {len(p.copies) + len(p.writes)} files ({human_size(p.bytes)}), "
                  f"{p.skipped} already there; manifest: {len(p.manifest.units)} units, "
                  f"{len(p.manifest.entries)} entries, {len(p.manifest.files)} files"
                  + (" (dry run: nothing written)" if args.dry_run else ""))
    return 0


def add_commands(sub) -> None:
    for add in (add_inspect, add_verify, add_prune, add_export, add_import, add_sign, add_merge):
        add(sub)


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="what a cache dir holds: entries with named keys, winners, sizes, warnings")
    p.add_argument("dir", help="the cache dir (a plain Triton cache dir works too)")
    add_output_args(p)
    p.set_defaults(func=cmd_inspect)


def add_verify(sub) -> None:
    from .args import add_model_args
    p = sub.add_parser("verify", help="checksums, compatibility with this machine, coverage of a model/TP plan; "
                                      "exit 0 only if all is well (a CI gate)")
    p.add_argument("dir")
    add_model_args(p, optional=True)
    p.add_argument("--allow-writable", action="store_true",
                   help="do not fail when users other than the owner can write the dir or a parent")
    p.add_argument("--allow-emulated", action="store_true",
                   help="do not fail on a cache built with --emulate (fake timings: its winners are arbitrary; "
                        "env AUTOTUNE_CACHE_ALLOW_EMULATED=1)")
    p.add_argument("--public-key", metavar="PUB.pem", type=existing_file,
                   help="also check manifest.sig against this ed25519 public key")
    add_output_args(p)
    p.set_defaults(func=cmd_verify)


def add_prune(sub) -> None:
    p = sub.add_parser("prune", help="delete losing configs' binaries and stale entries; keeps what a server loads")
    p.add_argument("dir")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")
    p.add_argument("--all-binaries", action="store_true",
                   help="keep only the autotune JSON (the server compiles each winner once, benchmarks nothing)")
    add_output_args(p)
    p.set_defaults(func=cmd_prune)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="write a relocatable .tar.gz bundle of a cache dir (replaces that file)")
    p.add_argument("dir")
    p.add_argument("bundle", help="the .tar.gz to write (its directory must exist)")
    add_output_args(p)
    p.set_defaults(func=cmd_export)


def add_import(sub) -> None:
    p = sub.add_parser("import", help="unpack a bundle into a new dir, rewriting Triton's absolute paths for it")
    p.add_argument("bundle")
    p.add_argument("dir", help="an absent or empty dir; the server must use this path")
    p.add_argument("--public-key", metavar="PUB.pem", type=existing_file,
                   help="require the bundle's manifest.sig to be a valid signature by this ed25519 public key")
    add_output_args(p)
    p.set_defaults(func=cmd_import)


def add_sign(sub) -> None:
    p = sub.add_parser("sign", help="sign a cache's manifest with an ed25519 key (writes manifest.sig; needs the "
                                    "`cryptography` package)")
    p.add_argument("dir")
    p.add_argument("--key", required=True, metavar="KEY.pem", type=existing_file,
                   help="unencrypted PEM ed25519 private key (openssl genpkey -algorithm ed25519 -out KEY.pem)")
    add_output_args(p)
    p.set_defaults(func=cmd_sign)


def add_merge(sub) -> None:
    p = sub.add_parser("merge", help="combine caches built in the same environment (other TP degrees, models)")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--into", required=True, help="the cache dir to merge into (created if absent; its parent must "
                                                 "exist)")
    p.add_argument("--dry-run", action="store_true")
    add_output_args(p)
    p.set_defaults(func=cmd_merge)
