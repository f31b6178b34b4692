"""The arguments every model-taking command shares (--model/--config/--tp/--target/--max-tokens/--tokens), those of
the commands that build (--timeout/--retries/--emulate/--triton-env), and the BuildSpec they make. Each help text
names the bound its value is checked against (shapes.py, builder/spec.py, builder/selection.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from .. import shapes, targets
from ..builder.selection import Settings as SelectionSettings
from ..builder.spec import DEFAULT_MAX_TOKENS, MAX_PLAN_CALLS, MAX_PLAN_KEYS, MAX_RETRIES, MAX_UNIT_TIMEOUT_S, BuildSpec
from ..errors import SpecError


def _items(text: str, what: str) -> list[str]:
    """A comma-separated list's items, none empty: "1,,2" is a typo, not the list 1,2."""
    items = [x.strip() for x in text.split(",")]
    if not any(items):
        raise SpecError(f"{what} is empty")
    if not all(items):
        raise SpecError(f"{what} has an empty item: {text!r}")
    return items


def _ints(text: str, what: str) -> tuple[int, ...]:
    items = _items(text, what)
    try:
        return tuple(int(x) for x in items)
    except ValueError:
        raise SpecError(f"{what} must be comma-separated integers, got {text!r}") from None


def name(flag: str, *, path: bool = False):
    """A parser `type=` for a name (--model, --gpu-type) or a `path` (--config): not empty (an empty --model or
    --config once meant the default model); a name without surrounding spaces, a path as given."""
    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{flag} is empty")
        return text if path else text.strip()
    check.__name__ = flag.lstrip("-")   # argparse names the type in its message
    return check


def existing_file(text: str) -> str:
    """A parser `type=` for a file the command reads (a key): a missing one is a usage mistake (exit 2), found
    before the command reads or writes anything."""
    if not Path(text).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


def target_names(text: str) -> tuple[str, ...]:
    """--target's items; a registered target's name in any case (as --model's), a module's as spelled (Python's
    module names are case-sensitive)."""
    known = {n.lower(): n for n in targets.names()}
    return tuple(known.get(t.lower(), t) for t in _items(text, "--target"))


def spec_from_args(args) -> BuildSpec:
    shape = shapes.resolve(args.model, args.config)
    return BuildSpec(model=shape, tp=_ints(args.tp, "--tp"), targets=target_names(args.target),
                     max_tokens=args.max_tokens, tokens=_ints(args.tokens, "--tokens") if args.tokens else (),
                     **build_fields(args))


def build_fields(args) -> dict:
    """The BuildSpec fields of how to build (a model's plan or records'): the cache dir, the per-unit deadline and
    retries, emulation, GPUs, selection, compile settings, --triton-env; each command's defaults where it lacks the
    flag (plan has none of them)."""
    return dict(cache_dir=getattr(args, "cache_dir", None), unit_timeout_s=getattr(args, "timeout", 1800.0),
                retries=getattr(args, "retries", 1), emulate=getattr(args, "emulate", False),
                gpus=getattr(args, "gpus", None), selection=_selection(args),
                overlap_compile=getattr(args, "overlap_compile", False), triton_env=triton_env_of(args),
                compile_workers=getattr(args, "compile_workers", None))


def triton_env_of(args) -> dict[str, str]:
    """--triton-env's items (triton_env.parse); {} for a command without the flag."""
    from ..builder import triton_env
    return triton_env.parse(getattr(args, "triton_env", None) or ())


def _selection(args) -> SelectionSettings:
    given = {k: v for k, v in (("mode", getattr(args, "selection", None)), ("noise", getattr(args, "noise", None)))
             if v is not None}
    probes = getattr(args, "probe_tokens", None)
    if probes is not None:
        given["probe_tokens"] = () if probes.strip().lower() in ("", "none") else _ints(probes, "--probe-tokens")
    try:
        return SelectionSettings(**given)
    except ValidationError as e:
        first = e.errors()[0]
        own = first.get("ctx", {}).get("error")   # a validator's own message names its flag and bound
        raise SpecError(str(own) if own else f"--selection/--noise/--probe-tokens: {first['msg']}") from None


def add_model_args(p, *, optional: bool = False) -> None:
    """`optional`: the model is an option of the command (verify's coverage), with no default model."""
    p.add_argument("--model", metavar="PRESET", type=name("--model"),
                   help="the model, by preset name (`autotune-cache models` lists them); "
                        + ("checks coverage of this model's keys (none without --model or --config)" if optional
                           else f"default {shapes.DEFAULT_MODEL}"))
    p.add_argument("--config", metavar="PATH", type=name("--config", path=True),
                   help=f"the model, from its Hugging Face config.json or a local snapshot dir holding one, instead "
                        f"of --model (a regular file of at most {shapes.CONFIG_MAX_BYTES >> 20} MiB; at most "
                        f"{shapes.MAX_HEADS} heads of dim {shapes.MAX_HEAD_DIM})")
    p.add_argument("--tp", default="1", metavar="N,...",
                   help=f"tensor-parallel degrees, comma-separated, each dividing the heads and at most "
                        f"{shapes.MAX_TP} (default 1)")
    p.add_argument("--target", default=targets.DEFAULT, metavar="NAME,...",
                   help=f"kernel source(s), comma-separated: {', '.join(targets.names())} (default {targets.DEFAULT})")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                   help=f"largest prefill (batched tokens) the server runs; every key up to it is covered "
                        f"(default {DEFAULT_MAX_TOKENS}, at most {shapes.MAX_TOKENS}; a plan may drive at most "
                        f"{MAX_PLAN_CALLS} calls and tune {MAX_PLAN_KEYS} keys)")
    p.add_argument("--tokens", metavar="T,...",
                   help=f"extra token counts to drive, comma-separated (each at most {shapes.MAX_TOKENS})")


def add_build_args(p) -> None:
    """The flags every command that builds (build, ensure) shares: per-unit deadline, retries, emulation, the
    Triton env vars to build with."""
    p.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS",
                   help=f"seconds per unit before its child is killed (default 1800, at most {MAX_UNIT_TIMEOUT_S:g})")
    p.add_argument("--retries", type=int, default=1, metavar="N",
                   help=f"fresh-child retries of a failed unit (default 1, at most {MAX_RETRIES})")
    p.add_argument("--emulate", action="store_true",
                   help="no GPU: compile for a fake sm_90 GPU, fake timings (for tests and key checks)")
    p.add_argument("--triton-env", action="append", metavar="NAME=VALUE",
                   help="a cache-invalidating Triton env var to build with, as the server will run (repeatable), "
                        "e.g. --triton-env TRITON_DEFAULT_FP_FUSION=1; NAME= builds with NAME unset. Triton keys "
                        "every entry with these vars, so a server with other values misses everything. Without it "
                        "the build uses this shell's values. A NAME the installed Triton does not count "
                        "cache-invalidating is refused")
