import json

import pytest

from autotune_cache import shapes
from autotune_cache.errors import ConfigError, SpecError, UnknownModelError

QWEN35_9B = {"architectures": ["Qwen3_5ForConditionalGeneration"], "torch_dtype": "bfloat16",
             "text_config": {"linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
                             "linear_value_head_dim": 128, "mamba_ssm_dtype": "float32", "dtype": "bfloat16"}}
QWEN3_NEXT = {"linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
              "linear_value_head_dim": 128, "torch_dtype": "bfloat16"}


def test_every_facts_model_has_a_preset():
    expected = {"qwen3-next-80b-a3b": (16, 32, "bfloat16"), "qwen3.5-4b": (16, 32, "float32"),
                "qwen3.5-9b": (16, 32, "float32"), "qwen3.5-35b-a3b": (16, 32, "float32"),
                "qwen3.5-27b": (16, 48, "float32"), "qwen3.5-122b-a10b": (16, 64, "float32"),
                "qwen3.5-397b-a17b": (16, 64, "float32")}
    got = {n: (m.num_k_heads, m.num_v_heads, m.state_dtype) for n, m in shapes.PRESETS.items()}
    assert got == expected
    assert all(m.head_k_dim == m.head_v_dim == 128 and m.dtype == "bfloat16" for m in shapes.PRESETS.values())


def test_preset_names_are_case_insensitive_and_unknown_is_clear():
    assert shapes.preset("Qwen3.5-9B").name == "qwen3.5-9b"
    with pytest.raises(UnknownModelError, match="unknown model 'llama'.*qwen3.5-9b"):
        shapes.preset("llama")


@pytest.mark.parametrize("tp,H,HV", [(1, 16, 32), (2, 8, 16), (4, 4, 8), (8, 2, 4), (16, 1, 2)])
def test_per_rank_shapes(tp, H, HV):
    r = shapes.preset("qwen3.5-9b").per_rank(tp)
    assert (r.H, r.HV, r.K, r.V, r.state_dtype) == (H, HV, 128, 128, "float32")


@pytest.mark.parametrize("tp,msg", [(3, "does not divide the 16"), (0, "positive"), (-2, "positive"),
                                    (32, "does not divide the 16")])
def test_impossible_tp(tp, msg):
    with pytest.raises(SpecError, match=msg):
        shapes.preset("qwen3.5-9b").per_rank(tp)


def test_tp_must_divide_value_heads_too():
    with pytest.raises(SpecError, match="does not divide the 24 linear-attention value heads"):
        shapes.ModelShape(name="x", num_k_heads=16, num_v_heads=24).per_rank(16)


def test_config_with_text_config_and_snapshot_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN35_9B))
    for path in (tmp_path, tmp_path / "config.json"):
        m = shapes.from_config(path)
        assert (m.num_k_heads, m.num_v_heads, m.dtype, m.state_dtype) == (16, 32, "bfloat16", "float32")


def test_config_without_ssm_dtype_takes_model_dtype(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_NEXT))
    assert shapes.from_config(tmp_path).state_dtype == "bfloat16"


@pytest.mark.parametrize("content,msg", [
    ("{not json", "not a readable JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"hidden_size": 4096}), "not a Gated DeltaNet"),
    (json.dumps({**QWEN3_NEXT, "linear_num_value_heads": "32"}), "linear_num_value_heads must be a positive integer"),
    (json.dumps({**QWEN3_NEXT, "linear_key_head_dim": 0}), "linear_key_head_dim must be a positive integer"),
    (json.dumps({**QWEN3_NEXT, "torch_dtype": "float8"}), "torch_dtype must be one of"),
    (json.dumps({**QWEN3_NEXT, "mamba_ssm_dtype": 3}), "mamba_ssm_dtype must be one of"),
])
def test_malformed_configs(tmp_path, content, msg):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=msg):
        shapes.from_config(path)


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        shapes.from_config(tmp_path / "nope.json")
