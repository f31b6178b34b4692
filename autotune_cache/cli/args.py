"""The arguments every model-taking command shares (--model/--config/--tp/--target/--max-tokens/--tokens), and the
BuildSpec they make."""
from __future__ import annotations

from pydantic import ValidationError

from .. import models, targets
from ..builder.selection import Settings as SelectionSettings
from ..builder.spec import DEFAULT_MAX_TOKENS, BuildSpec
from ..errors import SpecError


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


def add_model_args(p) -> None:
    p.add_argument("--model", help=f"preset name (see `autotune-cache models`; default {models.DEFAULT_MODEL})")
    p.add_argument("--config", help="local HF config.json or snapshot dir, instead of --model")
    p.add_argument("--tp", default="1", help="tensor-parallel degrees, comma-separated (default 1)")
    p.add_argument("--target", default=targets.DEFAULT,
                   help=f"kernel source(s), comma-separated: {', '.join(targets.names())} (default {targets.DEFAULT})")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"largest prefill (batched tokens) the server runs; every key up to it is covered "
                        f"(default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--tokens", help="extra token counts to drive, comma-separated")
