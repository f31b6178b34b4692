"""autotune-cache command line. Errors a user can act on: one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from . import models
from .errors import AutotuneCacheError, BuildFailedError, NoGPUError, SpecError
from .selection import Settings as SelectionSettings
from .spec import DEFAULT_MAX_TOKENS, BuildSpec
from .targets import SHORT

def _console(stream, **kwargs) -> Console:
    """Piped (logs, CI, `| less`, tests): tables 160 wide rather than rich's 80-column default, and no line broken
    inside a message (a long cache path used to split "changed since it was signed" over two lines)."""
    piped = not stream.isatty()
    return Console(highlight=False, width=160 if piped else None, soft_wrap=piped, **kwargs)


out = _console(sys.stdout)
err = _console(sys.stderr, stderr=True)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        print(f"autotune-cache: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip() != "")
    except ValueError:
        raise SpecError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise SpecError(f"{what} is empty")
    return values


def spec_from_args(args) -> BuildSpec:
    shape = models.resolve(args.model, args.config)
    return BuildSpec(model=shape, tp=_ints(args.tp, "--tp"), targets=tuple(args.target.split(",")),
                     max_tokens=args.max_tokens, tokens=_ints(args.tokens, "--tokens") if args.tokens else (),
                     cache_dir=getattr(args, "cache_dir", None), unit_timeout_s=getattr(args, "timeout", 1800.0),
                     retries=getattr(args, "retries", 1), emulate=getattr(args, "emulate", False),
                     gpus=getattr(args, "gpus", None), selection=_selection(args),
                     overlap_compile=getattr(args, "overlap_compile", False))


def _selection(args) -> SelectionSettings:
    given = {k: v for k, v in (("mode", getattr(args, "selection", None)), ("noise", getattr(args, "noise", None)))
             if v is not None}
    probes = getattr(args, "probe_tokens", None)
    if probes is not None:
        given["probe_tokens"] = () if probes.strip().lower() in ("", "none") else _ints(probes, "--probe-tokens")
    try:
        return SelectionSettings(**given)
    except ValidationError as e:
        raise SpecError(f"--selection/--noise/--probe-tokens: {e.errors()[0]['msg']}") from None


# -- models ---------------------------------------------------------------------------------------------------
def cmd_models(args) -> int:
    rows = [m.model_dump() for m in models.PRESETS.values()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = Table("model", "key heads", "value heads", "K", "V", "dtype", "state dtype", "TP degrees that fit")
    for m in models.PRESETS.values():
        fits = [str(t) for t in (1, 2, 4, 8, 16) if m.num_k_heads % t == 0 and m.num_v_heads % t == 0]
        table.add_row(m.name, str(m.num_k_heads), str(m.num_v_heads), str(m.head_k_dim), str(m.head_v_dim),
                      m.dtype, m.state_dtype, ",".join(fits))
    out.print(table)
    return 0


# -- plan -----------------------------------------------------------------------------------------------------
def plan_json(p) -> dict:
    return {"model": p.spec.model.model_dump(), "tp": list(p.spec.tp), "targets": list(p.spec.targets),
            "max_tokens": p.spec.max_tokens, "units": [u.model_dump(mode="json") for u in p.units],
            "totals": {"units": len(p.units), "keys": p.keys, "configs": p.configs}}


def print_plan(p, console: Console) -> None:
    s = p.spec
    console.print(f"[bold]plan[/bold]: {s.model.name} (key heads {s.model.num_k_heads}, value heads "
                  f"{s.model.num_v_heads}, {s.model.dtype}, state {s.model.state_dtype}), TP {','.join(map(str, s.tp))}, "
                  f"targets {','.join(s.targets)}, prefills up to {s.max_tokens} tokens")
    for u in p.units:
        sh = u.shape
        console.print(f"\n[bold]unit[/bold] {u.id}\n  target {u.target}, TP {','.join(map(str, u.tp))}: per rank "
                      f"H={sh.H} HV={sh.HV} K={sh.K} V={sh.V}; dtypes "
                      + ", ".join(f"{r}={d}" for r, d in u.dtypes.items())
                      + f"; varlen; token counts {', '.join(map(str, u.tokens))}")
        table = Table("kernel", "key fields", "dtypes", "configs (sm_90)", "tuned at T", box=None, pad_edge=False)
        for k in u.keys:
            nfields = len(k.fields)
            table.add_row(k.kernel, " ".join(f"{n}={v}" for n, v in k.fields.items()),
                          ",".join(SHORT.get(str(d).removeprefix("torch."), str(d)) for d in k.key[nfields:]),
                          "?" if k.configs is None else str(k.configs), str(k.tokens))
        console.print(table)
    console.print(f"\n[bold]total[/bold]: {len(p.units)} units, {p.keys} keys, {p.configs} configs to benchmark")


def cmd_plan(args) -> int:
    from .plan import plan
    p = plan(spec_from_args(args))
    if args.json:
        print(json.dumps(plan_json(p), indent=1))
    else:
        print_plan(p, out)
    return 0


# -- build ----------------------------------------------------------------------------------------------------
def cmd_build(args) -> int:
    from .gpus import for_build
    from .orchestrator import Build, prepare_cache_dir
    from .plan import plan

    spec = spec_from_args(args)
    if spec.cache_dir is None:
        raise SpecError("build needs --cache-dir DIR")
    devices = for_build(spec.gpus, spec.emulate)
    if args.compile_workers is not None:
        if args.compile_workers < 1:
            raise SpecError(f"--compile-workers must be >= 1, got {args.compile_workers}")
        os.environ["AUTOTUNE_CACHE_COMPILE_WORKERS"] = str(args.compile_workers)   # the child reads it
    p = plan(spec)
    print_plan(p, err)
    existed = Path(spec.cache_dir).exists()
    cache_dir = prepare_cache_dir(spec.cache_dir)
    try:
        manifest = Build(p, cache_dir, console=err, progress=not args.no_progress, devices=devices).run()
    except NoGPUError as e:
        if not existed:  # leave nothing behind for a build that could not start
            shutil.rmtree(cache_dir, ignore_errors=True)
        raise NoGPUError(f"{e}. The plan above is what a GPU host would build; run there, "
                         "or pass --emulate to compile for a fake sm_90 GPU with fake timings (tests only)") from None
    except BuildFailedError as e:
        err.print(f"[red]build incomplete[/red]: {e}")
        err.print(f"finished units are kept in {cache_dir}; run the same command again to retry the rest")
        return 1
    done = [u for u in manifest.units.values() if u.id in {x.id for x in p.units}]
    summary = {"cache_dir": str(cache_dir), "units": len(done), "entries": len(manifest.entries),
               "files": len(manifest.files), "bytes": sum(f.size for f in manifest.files.values()),
               "manifest": str(cache_dir / "manifest.json")}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        out.print(f"built {summary['units']} units, {summary['entries']} autotune entries, {summary['files']} files "
                  f"({summary['bytes'] / 1e6:.1f} MB) in {cache_dir}")
        out.print(f"serve with: TRITON_CACHE_DIR={cache_dir} TRITON_CACHE_AUTOTUNING=1")
    return 0


def _add_model_args(p) -> None:
    p.add_argument("--model", help=f"preset name (see `autotune-cache models`; default {models.DEFAULT_MODEL})")
    p.add_argument("--config", help="local HF config.json or snapshot dir, instead of --model")
    p.add_argument("--tp", default="1", help="tensor-parallel degrees, comma-separated (default 1)")
    p.add_argument("--target", default="fla", help="kernel source(s), comma-separated: fla (default), vllm, sglang")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"largest prefill (batched tokens) the server runs; every key up to it is covered "
                        f"(default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--tokens", help="extra token counts to drive, comma-separated")


def parser() -> argparse.ArgumentParser:
    ap = Parser(prog="autotune-cache", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("models", help="list model presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("plan", help="show the units and keys a build would tune (no GPU needed)")
    _add_model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("build", help="tune every key into a cache dir, in a child process (needs a CUDA GPU)")
    _add_model_args(p)
    p.add_argument("--cache-dir", required=True, help="the Triton cache dir to fill (TRITON_CACHE_DIR of the server)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per unit before its child is killed")
    p.add_argument("--retries", type=int, default=1, help="fresh-child retries of a failed unit (default 1)")
    p.add_argument("--emulate", action="store_true",
                   help="no GPU: compile for a fake sm_90 GPU, fake timings (for tests and key checks)")
    p.add_argument("--compile-workers", type=int, default=None,
                   help="threads compiling each key's configs before they are benchmarked, where compile worker "
                        "processes are off (AUTOTUNE_CACHE_COMPILE_PROCESSES=1, emulated builds) or the GPU's "
                        "profile cannot be read (default: every core; 1 = compile while benchmarking, as Triton)")
    p.add_argument("--overlap-compile", action="store_true",
                   help="benchmark each unit as soon as its own configs are compiled, while the workers compile the "
                        "next units (faster; default: every unit's configs first, so no timing runs next to busy "
                        "cores)")
    p.add_argument("--selection", choices=("robust", "triton"), default=None,
                   help="robust (default): short screening, the close configs timed again, interleaved, and the one "
                        "first in the kernel's list kept unless another beats it beyond --noise; triton: Triton's "
                        "own single pass and minimum, as a server tunes")
    p.add_argument("--noise", type=float, default=None,
                   help="robust selection: fraction a challenger must win by (default 0.02)")
    p.add_argument("--probe-tokens", default=None,
                   help="robust selection: token counts to also time every key at (comma-separated; 'none' for "
                        "none; default 512): a key serves every size of its bucket, so the winner must not be slow "
                        "at a small one")
    p.add_argument("--gpus", type=int, default=None,
                   help="shard the units over N GPUs, one child each (default: every visible GPU, from "
                        "CUDA_VISIBLE_DEVICES or nvidia-smi; with --emulate: 1)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_build)
    from . import cli_cache, cli_serve
    cli_cache.add_commands(sub)   # inspect, verify, prune, export, import, merge
    cli_serve.add_commands(sub)   # ensure
    return ap


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a job scheduler, `timeout`, a closed terminal), handled like Ctrl-C: the build stops its
    child and saves the manifest, instead of dying with its child left running."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()   # signal handlers live there only
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)} if main_thread else {}
    try:
        return args.func(args)
    except AutotuneCacheError as e:
        print(f"autotune-cache: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("autotune-cache: interrupted; finished units are kept", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)   # 130 for Ctrl-C, 143 for SIGTERM
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
