"""GDN model shapes: presets (FACTS.md §4) and local Hugging Face config.json files."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .errors import ConfigError, SpecError, UnknownModelError

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

    def per_rank(self, tp: int) -> "RankShape":
        """Shape one tensor-parallel rank sees. Raises SpecError when tp does not split the heads."""
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise SpecError(f"TP degree must be a positive integer, got {tp!r}")
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


def preset(name: str) -> ModelShape:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(PRESETS)} (or use --config PATH)") from None


def _dtype(value, field, path) -> str:
    if not isinstance(value, str) or value.lower().removeprefix("torch.") not in DTYPES:
        raise ConfigError(f"{path}: {field} must be one of {sorted(set(DTYPES.values()))}, got {value!r}")
    return DTYPES[value.lower().removeprefix("torch.")]


def from_config(path: str | Path) -> ModelShape:
    """Read a local HF config.json, or the config.json of a local snapshot dir."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    # Multimodal Qwen3.5 checkpoints keep the language model's fields under text_config.
    cfg = raw if "linear_num_key_heads" in raw else raw.get("text_config") or {}
    if not isinstance(cfg, dict) or "linear_num_key_heads" not in cfg:
        raise ConfigError(f"{path}: no linear_num_key_heads: not a Gated DeltaNet (Qwen3-Next / Qwen3.5) config")
    ints = {}
    for field in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim"):
        value = cfg.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}: {field} must be a positive integer, got {value!r}")
        ints[field] = value
    dtype = _dtype(cfg.get("torch_dtype", cfg.get("dtype", raw.get("torch_dtype", "bfloat16"))), "torch_dtype", path)
    state = cfg.get("mamba_ssm_dtype")
    state_dtype = dtype if state is None else _dtype(state, "mamba_ssm_dtype", path)
    name = raw.get("_name_or_path") or path.parent.name or "config"
    return ModelShape(name=str(name), num_k_heads=ints["linear_num_key_heads"],
                      num_v_heads=ints["linear_num_value_heads"], head_k_dim=ints["linear_key_head_dim"],
                      head_v_dim=ints["linear_value_head_dim"], dtype=dtype, state_dtype=state_dtype)


def resolve(model: str | None = None, config: str | Path | None = None) -> ModelShape:
    if model and config:
        raise SpecError("give --model or --config, not both")
    return from_config(config) if config else preset(model or DEFAULT_MODEL)
