"""CLI commands that plan and build: models, plan, build."""
from __future__ import annotations

import shlex

from rich.console import Console

from .. import shapes
from ..amounts import count, size
from ..builder.selection import MAX_PROBES
from ..builder.spec import MAX_GPUS
from ..cache import location
from ..errors import BuildFailedError, NoGPUError, printable
from ..targets import SHORT
from . import record_cmds
from .args import add_build_args, add_model_args, spec_from_args
from .console import (
    Column,
    add_command,
    add_output_args,
    err,
    out,
    print_item,
    print_json,
    print_table,
    progress_mode,
    report_error,
)


def cmd_models(args) -> int:
    if args.json:
        print_json([m.model_dump() for m in shapes.PRESETS.values()])
        return 0
    rows = []
    for m in shapes.PRESETS.values():
        fits = [str(t) for t in (1, 2, 4, 8, 16) if m.num_k_heads % t == 0 and m.num_v_heads % t == 0]
        rows.append([m.name, f"{m.num_k_heads}/{m.num_v_heads}", m.head_k_dim, m.head_v_dim, m.dtype, m.state_dtype,
                     ",".join(fits)])
    print_table(out, [Column("model", key=True), Column("heads k/v", right=True), Column("K", right=True),
                      Column("V", right=True), Column("dtype"), Column("state dtype"), Column("TP that fit")], rows)
    return 0


def plan_json(p) -> dict:
    return {"model": p.spec.model.model_dump(), "tp": list(p.spec.tp), "targets": list(p.spec.targets),
            "max_tokens": p.spec.max_tokens, "units": [u.model_dump(mode="json") for u in p.units],
            "totals": {"units": len(p.units), "keys": p.keys, "shared_keys": p.shared, "configs": p.configs}}


def print_plan(p, console: Console) -> None:
    s = p.spec
    console.print(f"[bold]plan[/bold]: {s.model.name} (key heads {s.model.num_k_heads}, value heads "
                  f"{s.model.num_v_heads}, {s.model.dtype}, state {s.model.state_dtype}), "
                  f"TP {','.join(map(str, s.tp))}, targets {','.join(s.targets)}, prefills up to {s.max_tokens} tokens")
    for u in p.units:
        sh = u.shape
        console.print("")
        print_item(console, f"unit {u.id}", indent=0)
        print_item(console, f"target {u.target}, TP {','.join(map(str, u.tp))}: per rank H={sh.H} HV={sh.HV} "
                            f"K={sh.K} V={sh.V}; dtypes " + ", ".join(f"{r}={d}" for r, d in u.dtypes.items())
                   + f"; varlen; token counts {', '.join(map(str, u.tokens))}")
        rows = []
        for k in u.keys:
            nfields = len(k.fields)
            rows.append([k.kernel, " ".join(f"{n}={v}" for n, v in k.fields.items()),
                         ",".join(SHORT.get(str(d).removeprefix("torch."), str(d)) for d in k.key[nfields:]),
                         "?" if k.configs is None else k.configs, k.tokens])
        print_table(console, [Column("kernel", key=True), Column("key fields", key=True), Column("dtypes"),
                              Column("configs (sm_90)", right=True), Column("tuned at T", right=True)], rows)
    shared = f" ({p.shared} reached by more than one unit, tuned once)" if p.shared else ""
    console.print(f"\n[bold]total[/bold]: {count(len(p.units), 'unit')}, {count(p.keys, 'key')}{shared}, "
                  f"{count(p.configs, 'config')} to benchmark")


def cmd_plan(args) -> int:
    from ..builder.plan import plan
    if args.from_record:
        return record_cmds.cmd_plan(args)
    p = plan(spec_from_args(args))
    if args.json:
        print_json(plan_json(p))
    else:
        print_plan(p, out)
    return 0


def cmd_build(args) -> int:
    from ..operations import build_into

    if args.from_record:
        return record_cmds.cmd_build(args)
    shown = not (args.quiet or args.json)   # the plan, on stderr, once every input is checked
    try:
        r = build_into(spec_from_args(args), console=err, progress=progress_mode(args),
                       on_plan=(lambda p: print_plan(p, err)) if shown else None)
    except NoGPUError as e:
        where = "The plan above is what a GPU host would build; run there" if shown else "Run on a GPU host"
        raise NoGPUError(f"{e}. {where}, or pass --emulate to compile for a fake sm_90 GPU with fake timings "
                         "(tests only)") from None
    except BuildFailedError as e:
        return report_error(f"build incomplete: {e}; finished units are kept in {location.normalize(args.cache_dir)}: "
                            "run the same command again to retry the rest", 1)
    if args.json:
        print_json(r.as_dict())
        return 0
    one = (f" (and {count(r.pruned_to_one, 'key')} pruned to one config: no entry, Triton looks them up nowhere)"
           if r.pruned_to_one else "")
    out.print(f"built {count(r.units, 'unit')}, {count(r.entries, 'autotune entry', 'autotune entries')}{one}, "
              f"{count(r.files, 'file')} ({size(r.bytes)}) in {r.cache_dir}")
    out.print(f"serve with: AUTOTUNE_CACHE_DIR={r.cache_dir} (the vLLM plugin, install()), or "
              f"TRITON_CACHE_DIR={r.cache_dir} TRITON_CACHE_AUTOTUNING=1")
    if r.env:   # what every disk key holds: a server without exactly these misses everything
        out.print("the server must run with these cache-invalidating env vars, as the build did: "
                  + " ".join(printable(shlex.quote(f"{k}={v}")) for k, v in sorted(r.env.items())))
    return 0


def add_commands(sub) -> None:
    p = add_command(sub, "models", "list the model presets and the tensor-parallel degrees each fits",
                    details="A preset is a model's GDN shape (heads, head dims, dtypes); --model takes its name. "
                            "Another model: --config with its config.json.",
                    examples=("autotune-cache models", "autotune-cache models --json"))
    add_output_args(p)
    p.set_defaults(func=cmd_models)
    p = add_command(sub, "plan", "show the units and keys a build would tune (no GPU needed)",
                    details="Pure: imports no kernel, runs anywhere. Per unit: the per-rank shape, dtypes, token "
                            "counts and, per autotuned kernel, its key and how many configs a build benchmarks.",
                    examples=("autotune-cache plan --model qwen3.5-9b --tp 1,2",
                              "autotune-cache plan --config ./Qwen3.5-9B/config.json --max-tokens 32768 --json",
                              "autotune-cache plan --from-record lookups.jsonl"))
    add_model_args(p)
    record_cmds.add_from_record(p)
    add_output_args(p)
    p.set_defaults(func=cmd_plan)
    p = add_command(sub, "build", "tune every key a server will look up into a cache dir (needs a CUDA GPU)",
                    details="Prints the plan, then runs it in a child process per GPU and writes Triton's cache "
                            "files plus manifest.json into --cache-dir. Running it again builds only what is "
                            "missing; a unit that fails is retried, one that hangs is killed after --timeout.",
                    examples=("autotune-cache build --model qwen3.5-9b --tp 1,2 --cache-dir ~/gdn-cache",
                              "# the server runs with TRITON_DEFAULT_FP_FUSION=0: build as it will run",
                              "autotune-cache build --cache-dir ~/gdn-cache --triton-env TRITON_DEFAULT_FP_FUSION=0",
                              "autotune-cache build --from-record lookups.jsonl --cache-dir ~/gdn-cache"))
    add_model_args(p)
    record_cmds.add_from_record(p)
    p.add_argument("--cache-dir", required=True, metavar="DIR",
                   help="the cache dir to fill: the server's TRITON_CACHE_DIR, or its AUTOTUNE_CACHE_DIR")
    add_build_args(p)
    p.add_argument("--compile-workers", type=int, default=None, metavar="N",
                   help="threads compiling each key's configs before they are benchmarked, where compile worker "
                        "processes are off (AUTOTUNE_CACHE_COMPILE_PROCESSES=1, emulated builds) or the GPU's "
                        "profile cannot be read (default: every core; 1 = compile while benchmarking, as Triton; at "
                        "most 1024)")
    p.add_argument("--overlap-compile", action="store_true",
                   help="benchmark each unit as soon as its own configs are compiled, while the workers compile the "
                        "next units (faster; default: every unit's configs first, so no timing runs next to busy "
                        "cores)")
    p.add_argument("--selection", choices=("robust", "triton"), default=None,
                   help="robust (default): short screening, the close configs timed again, interleaved, and the one "
                        "first in the kernel's list kept unless another beats it beyond --noise; triton: Triton's "
                        "own single pass and minimum, as a server tunes")
    p.add_argument("--noise", type=float, default=None, metavar="FRACTION",
                   help="robust selection: fraction a challenger must win by (default 0.02; at least 0, below 1)")
    p.add_argument("--probe-tokens", default=None, metavar="T,...",
                   help=f"robust selection: token counts to also time every key at (comma-separated, at most "
                        f"{MAX_PROBES}; 'none' for none; default 512): a key serves every size of its bucket, so the "
                        "winner must not be slow at a small one")
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help=f"shard the keys over N GPUs, one child each (default: every visible GPU, from "
                        f"CUDA_VISIBLE_DEVICES or nvidia-smi; with --emulate: 1; at most {MAX_GPUS})")
    add_output_args(p, json_help="print a JSON summary (errors too)", progress=True)
    p.set_defaults(func=cmd_build, on_interrupt="finished units are kept")
