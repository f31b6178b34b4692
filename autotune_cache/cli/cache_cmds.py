"""CLI commands that read or maintain a cache directory: inspect, verify, prune, export, import, merge, sign.

Each command is a view of a frozen record (scan.CacheScan, verify.Verification, prune.PrunePlan, ...): `--json`
prints the record, the default a table of it (console.print_table: stacked at a narrow width). Exit codes: 0 fine,
1 verify found problems, 2 a usage error or a cache dir/bundle that cannot be used (one line on stderr). A path the
user gives is checked before anything is written (`_writable_dir`, `_new_file`): a mistake creates nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..amounts import count, size
from ..cache import location
from ..cache.manifest import MANIFEST_NAME
from ..cache.scan import ROLES, CacheScan, fingerprint_text
from ..errors import CacheDirError
from .args import existing_file
from .console import Column, add_command, add_output_args, err, out, print_item, print_json, print_table


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
    if s.manifest_problem:
        console.print(f"[red]manifest unreadable[/red]: {s.manifest_problem}; what follows is the dir read as a "
                      "plain Triton cache (winners' binaries and fingerprint unknown)")
    elif m is None and not (s.triton_files or s.other):
        console.print("empty: no manifest and no Triton cache files (nothing built here yet)")
        return
    elif m is None:
        console.print("manifest: none (a plain Triton cache dir: winners' binaries and fingerprint unknown)")
    else:
        console.print(f"manifest: schema {m.schema_version}, autotune-cache {m.tool_version}, created {m.created}, "
                      f"updated {m.updated}, {count(len(m.units), 'unit')}, digest {m.digest()[:16]}")
        if s.unfinished:
            console.print(f"[yellow]incomplete build[/yellow] ({_unfinished_text(m)}): build again to finish it")
    console.print("fingerprint: unknown (manifest unreadable)" if s.manifest_problem
                  else f"fingerprint: {fingerprint_text(m)}")
    rows = []
    with_dirs = {c.kernel for c in s.compiled}
    for r in s.autotune:
        bins = s.binaries_of(r)
        # "?": not recorded and its kernel has compiled dirs here (one may be it); "none": nothing compiled here
        winner_bin = (size(sum(c.size for c in bins)) if bins else "pruned" if r.binaries
                      else "?" if r.kernel in with_dirs else "none")
        rows.append([r.kernel + ("" if r.in_manifest or m is None else " (unlisted)"), r.key_text, r.winner_text,
                     f"{r.best:.4g}", "-" if r.margin is None else f"{100 * r.margin:.1f}%", r.configs,
                     size(r.size), winner_bin])
    print_table(console, [Column("kernel", key=True), Column("key", key=True), Column("winner"),
                          Column("best ms", right=True), Column("margin", right=True), Column("configs", right=True),
                          Column("json", right=True), Column("winner bin", right=True)], rows)
    t = s.totals
    dirs = t["compiled_dirs"]
    console.print(f"[bold]totals[/bold]: {count(t['entries'], 'entry', 'entries')}, {count(t['kernels'], 'kernel')}; "
                  f"autotune JSON {size(t['autotune_bytes'])}; winners' binaries {size(t['winner_binaries_bytes'])} "
                  f"({count(dirs['winner'], 'dir')}); losers' binaries {size(t['loser_binaries_bytes'])} "
                  f"({count(dirs['loser'], 'dir')}); all {size(t['bytes'])}")
    if dirs["unknown"]:
        console.print(f"  {count(dirs['unknown'], 'compiled dir')} ({size(t['unknown_binaries_bytes'])}): "
                      f"winners or losers, unknown: {ROLES['unknown']}")
    if dirs["untuned"]:
        console.print(f"  {count(dirs['untuned'], 'compiled dir')} ({size(t['untuned_binaries_bytes'])}) of kernels "
                      "without an autotune entry")
    if t["other_bytes"]:
        console.print(f"  other files (Triton's launcher .so, leftovers): {size(t['other_bytes'])}")
    if t["entries_without_binaries"]:
        console.print(f"  {count(t['entries_without_binaries'], 'entry', 'entries')} without a compiled winner on "
                      "disk: the server compiles each once (no benchmark)")
    if m is not None:
        console.print(f"manifest vs disk: {count(len(s.unlisted), 'autotune file')} on disk not in the manifest, "
                      f"{count(len(s.missing), 'manifest entry', 'manifest entries')} not on disk")
        for r in s.unlisted:
            console.print(f"  on disk only: {r.file}")
        for f in s.missing:
            console.print(f"  manifest only: {f}")
    moved = sum(1 for c in s.compiled if c.foreign)
    if moved:
        console.print(f"[yellow]{count(moved, 'compiled kernel')} list their files at another path (moved without "
                      "`autotune-cache import`): the server recompiles them[/yellow]")
    for w in s.warnings:
        if w.path != MANIFEST_NAME or not s.manifest_problem:   # that one is the line at the top
            console.print(f"[yellow]warning[/yellow]: {w.path}: {w.message}")


def _unfinished_text(m) -> str:
    """'unit X pending', '2 of 3 units pending: X, Y', with failed units and their error."""
    parts = []
    for status in ("pending", "failed"):
        ids = [u.id for u in m.units.values() if u.status == status]
        if len(ids) == 1:
            parts.append(f"unit {ids[0]} {status}")
        elif ids:
            parts.append(f"{len(ids)} of {len(m.units)} units {status}: {', '.join(ids)}")
    return "; ".join(parts)


def _no_cache(s: CacheScan) -> str | None:
    """Why the dir is not a cache at all (no manifest, nothing in Triton's layout, yet not empty); None if it is
    one (or empty: a cache yet to be built)."""
    if s.manifest is not None or s.manifest_problem or s.triton_files or not (s.other or s.warnings):
        return None
    named = sorted({o.path.split("/", 1)[0] for o in s.other} | {w.path.split("/", 1)[0] for w in s.warnings})
    return (f"{s.root}: not a cache: no manifest.json and no file in Triton's cache layout (autotune results, "
            f"compiled kernels), only other files ({', '.join(named[:3])}{', ...' if len(named) > 3 else ''})")


def cmd_inspect(args) -> int:
    from ..cache.scan import scan
    s = scan(args.dir)
    problem = _no_cache(s)
    if problem:
        raise CacheDirError(problem)
    if args.json:
        print_json(s.as_dict())
    else:
        print_scan(s, out, args.dir)
    if s.manifest_problem and args.quiet:   # stdout says nothing: the reason for exit 1 goes to stderr
        print_item(err, f"manifest unreadable: {s.manifest_problem}", 0)
    return 1 if s.manifest_problem else 0


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
        console.print(f"  {n:5d} x {reason}: {size(b)}")
    for f in p.dropped_entries:
        console.print(f"  manifest entry dropped: {f}")
    if p.kept_unknown:
        console.print(f"  kept every compiled kernel of {', '.join(p.kept_unknown)}: their winners' binaries were "
                      "not recorded (manifest older than this tool's binaries field); --all-binaries drops them all")
    console.print(f"prune {p.root}: {verb} {size(p.bytes_freed)} ({p.bytes_freed} bytes) in "
                  f"{len(p.deletions)} paths" + (" (dry run: nothing deleted)" if args.dry_run else ""))
    return 0


# -- export / import ------------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    from ..cache.bundle import export
    r = export(args.dir, _new_path(args.bundle, "bundle"))
    if args.json:
        print_json(r.as_dict())
        return 0
    out.print(f"exported {count(r.files, 'file')} ({size(r.bytes)}) to {r.bundle} ({size(r.bundle_bytes)}), "
              f"manifest digest {r.manifest_digest[:16]}"
              + (f"; {count(len(r.left_out), 'file')} not in the manifest left out" if r.left_out else ""))
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
    out.print(f"imported {count(r.files, 'file')} ({size(r.bytes)}) into {r.cache_dir}; "
              f"{count(r.groups_rewritten, 'compiled-kernel group')} now point there (manifest digest "
              f"{r.manifest_digest[:16]} checked"
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
    console.print(f"merge into {p.into}: {verb} {len(p.copies) + len(p.writes)} files ({size(p.bytes)}), "
                  f"{p.skipped} already there; manifest: {len(p.manifest.units)} units, "
                  f"{len(p.manifest.entries)} entries, {len(p.manifest.files)} files"
                  + (" (dry run: nothing written)" if args.dry_run else ""))
    return 0


def add_commands(sub) -> None:
    for add in (add_inspect, add_verify, add_prune, add_export, add_import, add_sign, add_merge):
        add(sub)


_DIR_HELP = "the cache dir (a plain Triton cache dir works too)"


def add_inspect(sub) -> None:
    p = add_command(sub, "inspect", "show what a cache dir holds: entries with named keys, winners, sizes, warnings",
                    details="Read-only, one pass. Per autotune entry: kernel, key (named fields, then dtypes), "
                            "winning config, its time, the margin to the runner-up, configs benchmarked, bytes; then "
                            "totals, the build's fingerprint and what the manifest and the disk disagree on.",
                    examples=("autotune-cache inspect ~/gdn-cache",
                              "autotune-cache inspect ~/gdn-cache --json | jq '.totals'"))
    p.add_argument("dir", metavar="DIR", help=_DIR_HELP)
    add_output_args(p)
    p.set_defaults(func=cmd_inspect)


def add_verify(sub) -> None:
    from .args import add_model_args
    p = add_command(sub, "verify", "check a cache: checksums, permissions, this machine, coverage of a model; exit 0 "
                                   "only if all is well (a CI gate)",
                    details="Checksums: every file the manifest lists, nothing it does not. Compatibility: the "
                            "build's Python, Triton, ptxas, GPU and env vars against this machine's (a difference "
                            "means the server misses every key). Coverage, with --model or --config: every key that "
                            "model's server will look up is here. Exit 1 names each problem.",
                    examples=("autotune-cache verify ~/gdn-cache",
                              "autotune-cache verify ~/gdn-cache --model qwen3.5-9b --tp 1,2",
                              "autotune-cache verify ~/gdn-cache --public-key key.pub.pem -q"))
    p.add_argument("dir", metavar="DIR", help="the cache dir to check")
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
    p = add_command(sub, "prune", "delete losing configs' binaries and stale entries; keeps what a server loads",
                    details="A build keeps every config it compiled (about 90% of its bytes are losers). Prune keeps "
                            "the autotune entries and the winners' binaries, so the server still compiles nothing; "
                            "sign again afterwards if the cache was signed.",
                    examples=("autotune-cache prune ~/gdn-cache --dry-run", "autotune-cache prune ~/gdn-cache",
                              "# smallest: the server compiles each winner once, benchmarks nothing",
                              "autotune-cache prune ~/gdn-cache --all-binaries"))
    p.add_argument("dir", metavar="DIR", help="the cache dir to prune (it must be writable)")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")
    p.add_argument("--all-binaries", action="store_true",
                   help="keep only the autotune JSON (the server compiles each winner once, benchmarks nothing)")
    add_output_args(p)
    p.set_defaults(func=cmd_prune)


def add_export(sub) -> None:
    p = add_command(sub, "export", "write a relocatable .tar.gz bundle of a cache dir (replaces that file)",
                    details="The files the manifest lists (checked first), the manifest and its signature; `import` "
                            "unpacks it at any path with the compiled kernels pointing there.",
                    examples=("autotune-cache export ~/gdn-cache gdn-cache.tar.gz",))
    p.add_argument("dir", metavar="DIR", help="the cache dir to export")
    p.add_argument("bundle", metavar="BUNDLE", help="the .tar.gz to write (its directory must exist)")
    add_output_args(p)
    p.set_defaults(func=cmd_export)


def add_import(sub) -> None:
    p = add_command(sub, "import", "unpack a bundle into a new dir, rewriting Triton's absolute paths for it",
                    details="Every member is checked (no links, no path outside DIR, every sha256 and the manifest "
                            "digest) before the cache appears in DIR. A plain `cp -r` of a cache keeps its autotune "
                            "hits but makes the server recompile every kernel; import does not.",
                    examples=("autotune-cache import gdn-cache.tar.gz /srv/gdn-cache",
                              "autotune-cache import gdn-cache.tar.gz /srv/gdn-cache --public-key key.pub.pem"))
    p.add_argument("bundle", metavar="BUNDLE", help="the .tar.gz written by `autotune-cache export`")
    p.add_argument("dir", metavar="DIR", help="an absent or empty dir; the server must use this path")
    p.add_argument("--public-key", metavar="PUB.pem", type=existing_file,
                   help="require the bundle's manifest.sig to be a valid signature by this ed25519 public key")
    add_output_args(p)
    p.set_defaults(func=cmd_import)


def add_sign(sub) -> None:
    p = add_command(sub, "sign", "sign a cache's manifest with an ed25519 key (writes manifest.sig)",
                    details="Checks every file against the manifest first. The server (AUTOTUNE_CACHE_PUBLIC_KEY), "
                            "verify, import and fetch check the signature with the public key. Needs the "
                            "`cryptography` package (the `sign` extra).",
                    examples=("openssl genpkey -algorithm ed25519 -out key.pem",
                              "openssl pkey -in key.pem -pubout -out key.pub.pem",
                              "autotune-cache sign ~/gdn-cache --key key.pem"))
    p.add_argument("dir", metavar="DIR", help="the cache dir to sign (it must be writable)")
    p.add_argument("--key", required=True, metavar="KEY.pem", type=existing_file,
                   help="unencrypted PEM ed25519 private key (openssl genpkey -algorithm ed25519 -out KEY.pem)")
    add_output_args(p)
    p.set_defaults(func=cmd_sign)


def add_merge(sub) -> None:
    p = add_command(sub, "merge", "combine caches built in the same environment (other TP degrees, models)",
                    details="Copies each DIR's files into --into, rewriting the compiled kernels' paths for it and "
                            "merging the manifests. A DIR whose disk keys differ (another Triton, Python or env "
                            "vars) is refused; the same key tuned twice keeps the first and is listed as a conflict.",
                    examples=("autotune-cache merge ~/cache-tp1 ~/cache-tp2 --into ~/gdn-cache",
                              "autotune-cache merge ~/cache-b --into ~/gdn-cache --dry-run"))
    p.add_argument("dirs", nargs="+", metavar="DIR", help="the cache dirs to copy from")
    p.add_argument("--into", required=True, metavar="DIR",
                   help="the cache dir to merge into (created if absent; its parent must exist)")
    p.add_argument("--dry-run", action="store_true", help="show what would be copied, write nothing")
    add_output_args(p)
    p.set_defaults(func=cmd_merge)
