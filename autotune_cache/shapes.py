"""GDN model shapes: presets (FACTS.md §4) and local Hugging Face config.json files; the bounds on every size the
tool accepts, and the one check (`whole`) that applies them."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from . import bounded_json
from .errors import ConfigError, SpecError, UnknownModelError, shown

# Bounds on the sizes a model and a build request may have, whether from a flag, a config.json or the Python API;
# the message refusing a value past one names it. Far above any GDN model (16-64 heads of dim 128, TP <= 16,
# prefills of 16k-256k tokens), they keep a typo or a hostile config.json from sizing a plan, a loop or a tensor:
# `plan --max-tokens 99999999999` grew to 22 GB, and a config.json with 2**31 heads likewise.
MAX_HEADS = 4096             # linear-attention key heads, and value heads, of the whole model
MAX_HEAD_DIM = 1024          # linear_key_head_dim, linear_value_head_dim
MAX_TP = 1024                # a tensor-parallel degree (it must also divide the heads)
MAX_TOKENS = 1_048_576       # --max-tokens, and each count of --tokens and --probe-tokens
CONFIG_MAX_BYTES = 4 << 20   # a config.json (real ones: a few KiB); read no further


def whole(value, what: str, low: int = 1, high: int | None = None, error: type[Exception] = SpecError) -> int:
    """`value` if it is an int (not a bool) from `low` to `high`, else `error` naming `what` and the bound it
    misses. Example: whole(99999999999, "--max-tokens", high=MAX_TOKENS) raises
    "--max-tokens must be at most 1048576, got 99999999999"."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        need = "a positive integer" if low == 1 else f">= {low}"
        raise error(f"{what} must be {need}, got {shown(value)}")
    if high is not None and value > high:
        raise error(f"{what} must be at most {high}, got {shown(value)}")
    return value


# Each size of a ModelShape, its config.json field and its bound.
SIZES = {"num_k_heads": ("linear_num_key_heads", MAX_HEADS), "num_v_heads": ("linear_num_value_heads", MAX_HEADS),
         "head_k_dim": ("linear_key_head_dim", MAX_HEAD_DIM), "head_v_dim": ("linear_value_head_dim", MAX_HEAD_DIM)}

DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
          "half": "float16", "float32": "float32", "fp32": "float32", "float": "float32"}


class ModelShape(BaseModel):
    """The linear-attention (GDN) part of a model, whole (before tensor parallelism)."""
    model_config = ConfigDict(frozen=True)

    name: str
    num_k_heads: int        # linear_num_key_heads, e.g. 16
    num_v_heads: int        # linear_num_value_heads, e.g. 32
    head_k_dim: int = 128   # linear_key_head_dim
    head_v_dim: int = 128   # linear_value_head_dim
    dtype: str = "bfloat16"        # activations (q, k, v): torch_dtype
    state_dtype: str = "bfloat16"  # recurrent state: mamba_ssm_dtype, else dtype

    @field_validator(*SIZES)
    @classmethod
    def _size(cls, v, info: ValidationInfo):
        assert info.field_name is not None   # a field validator's
        return whole(v, info.field_name, high=SIZES[info.field_name][1])

    def per_rank(self, tp: int) -> RankShape:
        """Shape one tensor-parallel rank sees. Raises SpecError when tp does not split the heads."""
        whole(tp, "TP degree", high=MAX_TP)
        for what, n in (("key", self.num_k_heads), ("value", self.num_v_heads)):
            if n % tp:
                raise SpecError(f"TP degree {tp} does not divide the {n} linear-attention {what} heads of {self.name}")
        return RankShape(tp=tp, H=self.num_k_heads // tp, HV=self.num_v_heads // tp,
                         K=self.head_k_dim, V=self.head_v_dim, dtype=self.dtype, state_dtype=self.state_dtype)


class RankShape(BaseModel):
    """What the kernels of one rank are called with: H key heads, HV value heads per rank."""
    model_config = ConfigDict(frozen=True)

    tp: int
    H: int
    HV: int
    K: int
    V: int
    dtype: str
    state_dtype: str


def _preset(name, k, v, state):
    return ModelShape(name=name, num_k_heads=k, num_v_heads=v, dtype="bfloat16", state_dtype=state)


PRESETS: dict[str, ModelShape] = {m.name: m for m in [
    _preset("qwen3-next-80b-a3b", 16, 32, "bfloat16"),
    _preset("qwen3.5-4b", 16, 32, "float32"),
    _preset("qwen3.5-9b", 16, 32, "float32"),
    _preset("qwen3.5-35b-a3b", 16, 32, "float32"),
    _preset("qwen3.5-27b", 16, 48, "float32"),
    _preset("qwen3.5-122b-a10b", 16, 64, "float32"),
    _preset("qwen3.5-397b-a17b", 16, 64, "float32"),
]}
DEFAULT_MODEL = "qwen3.5-9b"
DEFAULT_MAX_TOKENS = 16384   # the largest prefill a request covers unless it says otherwise


def preset(name: str) -> ModelShape:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(PRESETS)} (or use --config PATH)") from None


def _dtype(value, field, path) -> str:
    if not isinstance(value, str) or value.lower().removeprefix("torch.") not in DTYPES:
        raise ConfigError(f"{path}: {field} must be one of {sorted(set(DTYPES.values()))}, got {shown(value)}")
    return DTYPES[value.lower().removeprefix("torch.")]


def _read_config(path: Path) -> tuple[Path, bytes]:
    """The bytes of a config.json (of a dir: its config.json), or ConfigError unless it is a regular file of at most
    CONFIG_MAX_BYTES. Its type is checked before it is opened (a FIFO would block the open and the read, /dev/zero
    never ends), and again on the open file, in case another took its place in between."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            path = path / "config.json"
            st = os.stat(path)
        _regular(path, st)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:   # ValueError: a NUL in the path
        raise ConfigError(f"{path}: not a readable JSON file ({getattr(e, 'strerror', None) or e})") from None
    with os.fdopen(fd, "rb") as f:
        _regular(path, os.fstat(fd))
        data = f.read(CONFIG_MAX_BYTES + 1)   # a file growing as it is read stops here too
    if len(data) > CONFIG_MAX_BYTES:
        _too_large(path)
    return path, data


def _regular(path: Path, st: os.stat_result) -> None:
    """ConfigError unless `st` is a regular file of at most CONFIG_MAX_BYTES, naming what it is instead."""
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a file")
        raise ConfigError(f"{path}: {kind}; a config.json must be a regular file")
    if st.st_size > CONFIG_MAX_BYTES:
        _too_large(path)


def _too_large(path: Path):
    raise ConfigError(f"{path}: larger than {CONFIG_MAX_BYTES >> 20} MiB, the most a config.json may have")


def from_config(path: str | Path) -> ModelShape:
    """Read a local HF config.json, or the config.json of a local snapshot dir."""
    path, data = _read_config(Path(path))
    try:
        raw = bounded_json.json_value(data)
    except ValueError as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    # Multimodal Qwen3.5 checkpoints keep the language model's fields under text_config.
    cfg = raw if "linear_num_key_heads" in raw else raw.get("text_config") or {}
    if not isinstance(cfg, dict) or "linear_num_key_heads" not in cfg:
        raise ConfigError(f"{path}: no linear_num_key_heads: not a Gated DeltaNet (Qwen3-Next / Qwen3.5) config")
    sizes = {size: whole(cfg.get(field), f"{path}: {field}", high=bound, error=ConfigError)
             for size, (field, bound) in SIZES.items()}
    dtype = _dtype(cfg.get("torch_dtype", cfg.get("dtype", raw.get("torch_dtype", "bfloat16"))), "torch_dtype", path)
    state = cfg.get("mamba_ssm_dtype")
    state_dtype = dtype if state is None else _dtype(state, "mamba_ssm_dtype", path)
    name = raw.get("_name_or_path")
    name = name if isinstance(name, str) and name else path.parent.name or "config"
    return ModelShape(name=name, dtype=dtype, state_dtype=state_dtype, **sizes)


def resolve(model: str | None = None, config: str | Path | None = None) -> ModelShape:
    if model and config:
        raise SpecError("give --model or --config, not both")
    return from_config(config) if config else preset(model or DEFAULT_MODEL)
