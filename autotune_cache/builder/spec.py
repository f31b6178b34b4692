"""What to build (BuildSpec) and the units of work a plan splits it into."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..errors import SpecError
from ..record.schema import KernelId, Record
from ..shapes import DEFAULT_MAX_TOKENS, MAX_TOKENS, MAX_TP, ModelShape, RankShape, whole
from . import triton_env
from .selection import Settings as SelectionSettings

# Bounds of a build request besides the model's and the token counts (shapes.py), each named in the message that
# refuses a value past it.
MAX_RETRIES = 100                     # fresh-child retries of a failed unit
MAX_GPUS = 256                        # build children at once (real hosts: <= 16 GPUs; emulated builds any number)
MAX_UNIT_TIMEOUT_S = 7 * 24 * 3600.0  # a week per unit (units take minutes); inf would never time out
MAX_COMPILE_WORKERS = 1024            # compile threads or worker processes per child
# The size of a plan (plan.py), over all its units: what the bounds above allow can still multiply past what a
# build can do (4096 heads at 1M tokens: 65,536 l2norm buckets at TP 1). Real plans: a few hundred of each.
MAX_PLAN_CALLS = 10_000   # serving calls a build drives: the token counts of every unit
MAX_PLAN_KEYS = 10_000    # (kernel, key) pairs a build tunes


class BuildSpec(BaseModel):
    """A build request. Example: qwen3.5-9b at TP 1 and 2, upstream FLA, prefills up to 16384 tokens."""
    model_config = ConfigDict(frozen=True)

    model: ModelShape | None = None   # None: a build of records only (replay_unit.py)
    tp: tuple[int, ...] = (1,)
    targets: tuple[str, ...] = ("fla",)
    max_tokens: int = DEFAULT_MAX_TOKENS
    # Extra token counts to drive besides the ones the plan derives (every key up to max_tokens).
    tokens: tuple[int, ...] = ()
    cache_dir: str | None = None
    unit_timeout_s: float = 1800.0   # per unit, in the child; a hung child is killed after it
    retries: int = 1                 # fresh-child retries of a failed unit
    selection: SelectionSettings = SelectionSettings()   # how winners are chosen (selection.py)
    # Compile for a fake sm_90 GPU with fake timings (FACTS.md §2): CPU tests and key prediction only.
    emulate: bool = False
    # GPUs to shard the keys over, one child each; None = every visible GPU (emulated builds: 1). gpus.py.
    gpus: int | None = None
    # Benchmark unit i while the compile workers compile the units after it (faster: 41 s against 48 s on an H200
    # host), instead of waiting for every unit's configs first (the default: no timing next to compiling cores).
    overlap_compile: bool = False
    # Cache-invalidating Triton env vars the build child (and its compile workers) run with, in place of this
    # environment's: (name, value) pairs, "" = unset there; a dict is accepted. Names Triton does not count are
    # refused when the build starts (triton_env.check: Triton is asked). Example: {"TRITON_DEFAULT_FP_FUSION": "1"}.
    triton_env: tuple[tuple[str, str], ...] = ()
    # Threads compiling each key's configs in the child where compile worker processes are off (`--compile-workers`;
    # None: AUTOTUNE_CACHE_COMPILE_WORKERS, else every core), and compile worker processes per child (None:
    # AUTOTUNE_CACHE_COMPILE_PROCESSES, else the child's default; a fleet job passes its share of the node's cores).
    compile_workers: int | None = None
    compile_processes: int | None = None

    @field_validator("compile_workers", "compile_processes")
    @classmethod
    def _compile(cls, v: int | None, info: ValidationInfo) -> int | None:
        flag = "--compile-workers" if info.field_name == "compile_workers" else "compile_processes"
        if v is not None and v < 1:
            raise SpecError(f"{flag} must be >= 1, got {v}")
        if v is not None and v > MAX_COMPILE_WORKERS:   # more than any host has cores: a typo, not a plan
            raise SpecError(f"{flag} must be at most {MAX_COMPILE_WORKERS}, got {v}")
        return v

    @field_validator("triton_env", mode="before")
    @classmethod
    def _triton_env(cls, v: object) -> tuple[tuple[str, str], ...]:
        if not isinstance(v, Mapping | list | tuple):
            raise SpecError(f"triton_env must be a mapping of env var names to values, got {type(v).__name__}")
        return triton_env.pairs(v)

    @field_validator("tp")
    @classmethod
    def _tp(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise SpecError("give at least one TP degree")
        return tuple(dict.fromkeys(whole(t, "TP degree", high=MAX_TP) for t in v))

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int) -> int:
        return whole(v, "--max-tokens", high=MAX_TOKENS)

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted({whole(t, "each token count", high=MAX_TOKENS) for t in v}))

    @field_validator("retries")
    @classmethod
    def _retries(cls, v: int) -> int:
        return whole(v, "retries", low=0, high=MAX_RETRIES)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, v: object) -> int | None:
        return v if v is None else whole(v, "--gpus", high=MAX_GPUS)

    @field_validator("unit_timeout_s")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not v > 0:   # NaN too: no deadline would ever pass
            raise SpecError(f"unit timeout must be a positive number of seconds, got {v}")
        if v > MAX_UNIT_TIMEOUT_S:
            raise SpecError(f"unit timeout must be at most {MAX_UNIT_TIMEOUT_S:g} seconds, got {v:g}")
        return v


class PlannedKey(BaseModel):
    """One autotune key a unit will tune, as Triton forms it: the `key=[...]` values, then every tensor's dtype."""
    model_config = ConfigDict(frozen=True)

    kernel: str                      # e.g. "l2norm_fwd_kernel"
    fields: dict[str, int | bool]    # e.g. {"D": 128, "NB": 1}
    key: tuple                       # e.g. (128, 1, "torch.bfloat16", "torch.bfloat16", "torch.float32")
    configs: int | None              # configs benchmarked on sm_90, None where it cannot be derived
    tokens: int                      # the token count that first reaches this key when the unit runs


class _Unit(BaseModel):
    """What every unit has: an id stable across runs, the keys it tunes, the token counts it is driven at."""
    model_config = ConfigDict(frozen=True)

    id: str
    keys: tuple[PlannedKey, ...] = Field(default=())
    tokens: tuple[int, ...] = ()  # driven in this order (largest first: shared keys tune at the largest size)

    @property
    def expected_keys(self) -> int:
        return len(self.keys)


class ModelUnit(_Unit):
    """One child-side job of a model's plan (plan.py): drive one target's serving call for one per-rank shape at
    several token counts. Example id: "fla/H16-HV32-K128-V128-bf16-state_fp32-g_fp32-beta_bf16-idx_int64"."""
    kind: Literal["model"] = "model"
    target: str
    shape: RankShape
    tp: tuple[int, ...] = ()     # TP degrees that share this per-rank shape
    dtypes: dict[str, str] = Field(default_factory=dict)  # role -> torch dtype name: act, state, g, beta, index
    varlen: bool = True


class ReplayUnit(_Unit):
    """One child-side job of `build --from-record` (replay_unit.py): the recorded calls of one kernel, made again
    (record/replay.py); no token counts. Its manifest record names the target "record"."""
    kind: Literal["replay"] = "replay"
    target: Literal["record"] = "record"
    kernel: KernelId
    replay: tuple[Record, ...] = ()


# A unit of either kind, told apart by `kind` when it crosses to the child (protocol.ChildUnit) or a compile worker
Unit = Annotated[ModelUnit | ReplayUnit, Field(discriminator="kind")]
