"""CLI commands around records (autotune_cache/record/): `record -- CMD` runs a command recording the autotune
lookups of every Python process it starts; `plan --from-record` and `build --from-record` (build_cmds.py hands them
here) plan and build exactly the recorded lookups."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from rich.markup import escape

from ..cache.files import Created
from ..errors import NoGPUError, SpecError
from .console import add_command, add_verbose_arg, err, out, print_json, progress_mode


def _boot_dir() -> str:
    return str(Path(__file__).resolve().parent.parent / "record" / "boot")


def cmd_record(args) -> int:
    from ..record import MISSES_ENV, RECORD_ENV, store
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SpecError("record needs a command to run: autotune-cache record --out PATH -- CMD ...")
    if shutil.which(command[0]) is None:   # checked first: a command that cannot run leaves no record file
        raise SpecError(f"cannot run {command[0]!r}: no such command (or not executable)")
    created = Created()
    with created.undone_on_error(keep=(KeyboardInterrupt,)):   # Ctrl-C in the command keeps what it recorded
        created.file_if_new(Path(args.out).expanduser().absolute())
        path = store.open_for_append(args.out)
        before = path.stat().st_size
        env = dict(os.environ)
        env[MISSES_ENV if args.misses else RECORD_ENV] = str(path)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_boot_dir(), env.get("PYTHONPATH")]))
        try:
            proc = subprocess.run(command, env=env)
        except OSError as e:
            raise SpecError(f"cannot run {command[0]!r}: {e.strerror or e}") from None
    with open(path, "rb") as f:
        f.seek(before)
        added = sum(1 for line in f if line.strip())
    if args.json:   # after the command's own output, which is stdout's until it ends
        print_json({"out": str(path), "lookups": added, "exit": proc.returncode})
    elif not args.quiet:   # no build hint where there is nothing a build could replay
        err.print(f"autotune-cache record: {added} lookup line(s) appended to {escape(str(path))}; build them with: "
                  f"autotune-cache build --from-record {escape(str(path))} --cache-dir DIR" if added else
                  "autotune-cache record: 0 autotune lookups recorded (no Triton autotuner ran in a Python process "
                  f"the command started); nothing appended to {escape(str(path))}")
    return proc.returncode


def _spec(args):
    from ..builder.spec import BuildSpec
    from .args import build_fields
    return BuildSpec(model=None, targets=(), **build_fields(args))


def plan_json(rp) -> dict:
    return {"records": rp.records, "lines": rp.lines,
            "units": [{"id": u.id, "kernel": u.kernel.model_dump(), "keys": [list(k.key) for k in u.keys],
                       "configs": sum(k.configs or 0 for k in u.keys)} for u in rp.plan.units],
            "unreplayable": [vars(x) for x in rp.unreplayable], "warnings": list(rp.warnings),
            "totals": {"units": len(rp.plan.units), "keys": rp.plan.keys, "configs": rp.plan.configs}}


def print_plan(rp, console) -> None:
    console.print(f"[bold]plan[/bold] from records: {rp.lines} line(s), {rp.records} distinct lookup(s)")
    for u in rp.plan.units:
        console.print(f"  {escape(u.kernel.label)}: {len(u.keys)} key(s), "
                      f"{sum(k.configs or 0 for k in u.keys)} configs")
    _print_problems(rp, console)
    console.print(f"[bold]total[/bold]: {len(rp.plan.units)} kernels, {rp.plan.keys} keys, {rp.plan.configs} "
                  "configs to benchmark")


def _print_problems(rp, console) -> None:
    for x in rp.unreplayable:
        console.print(f"[red]unreplayable[/red] {escape(x.kernel)} ({x.keys} key(s)): {escape(x.reason)}")
    for w in rp.warnings[:20]:
        console.print(f"[yellow]warning: not a record: {escape(w)}[/yellow]")


def cmd_plan(args) -> int:
    from ..builder import replay_unit
    rp = replay_unit.plan(args.from_record, _spec(args))
    if args.json:
        print_json(plan_json(rp))
    else:
        print_plan(rp, out)
    return 0


def cmd_build(args) -> int:
    from ..operations import build_from_records

    try:
        r = build_from_records(args.from_record, _spec(args), console=err, progress=progress_mode(args),
                               on_plan=None if args.quiet or args.json else lambda rp: print_plan(rp, err))
    except NoGPUError as e:
        raise NoGPUError(f"{e}; run on a GPU host, or pass --emulate to compile for a fake sm_90 GPU (tests only)"
                         ) from None
    if args.json:
        print_json(r.as_dict())
    else:
        for unit, error in r.failed:
            err.print(f"[red]not built[/red] {escape(unit)}: {escape(error)}")
        out.print(f"built {r.units} of {len(r.plan.plan.units)} recorded kernels, {r.entries} autotune "
                  f"entries in {r.cache_dir}; {r.same_file} recorded lookups at the very autotune "
                  f"file their process looked up, {len(r.other_file)} at another")
        for line in r.other_file[:10]:
            out.print(f"  [yellow]other disk key[/yellow] {escape(line)}")
    return 0 if r.ok else 1


def add_commands(sub) -> None:
    p = add_command(sub, "record", "run a command, recording the autotune lookups of every Python process it starts",
                    details="Any framework's Triton-autotuned kernels, without a target: each distinct (kernel, key) "
                            "the command's processes look up is appended to --out as one JSON line that can be "
                            "replayed; `build --from-record` then tunes exactly those. The command's own output and "
                            "exit code pass through.",
                    examples=("autotune-cache record --out lookups.jsonl -- vllm serve Qwen/Qwen3.5-9B",
                              "# only what the disk cache missed, to complete a cache",
                              "autotune-cache record --out misses.jsonl --misses -- python bench.py",
                              "autotune-cache build --from-record lookups.jsonl --cache-dir ~/gdn-cache"))
    p.add_argument("--out", required=True, metavar="PATH",
                   help="the record file to append to (JSON lines; created if absent)")
    p.add_argument("--misses", action="store_true", help="record only lookups not found in the disk cache")
    p.add_argument("--json", action="store_true",
                   help="after the command ends, print {\"out\", \"lookups\", \"exit\"} on stdout (the command's "
                        "own output comes first)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line (the exit code is the command's)")
    add_verbose_arg(p)
    p.add_argument("command", nargs="...", metavar="-- CMD ...",
                   help="the command to run and its arguments, after `--`")
    p.set_defaults(func=cmd_record)


def add_from_record(p) -> None:
    """The --from-record option of plan and build (build_cmds.py)."""
    p.add_argument("--from-record", nargs="+", metavar="PATH", default=None,
                   help="record file(s) written by `autotune-cache record` (or by a server with AUTOTUNE_CACHE_RECORD "
                        "set): plan or build exactly the recorded lookups, merged and deduplicated, instead of a "
                        "model's")
