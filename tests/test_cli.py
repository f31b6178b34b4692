import json

import pytest
from helpers import run_cli


def test_models_table_and_json():
    assert "qwen3.5-397b-a17b" in run_cli("models", check=0).stdout
    rows = json.loads(run_cli("models", "--json", check=0).stdout)
    assert {r["name"] for r in rows} >= {"qwen3.5-9b", "qwen3-next-80b-a3b"}


def test_plan_json():
    data = json.loads(run_cli("plan", "--model", "qwen3.5-27b", "--tp", "1,2", "--json", check=0).stdout)
    assert data["totals"]["units"] == 2
    unit = data["units"][0]
    assert unit["shape"]["HV"] == 48 and unit["dtypes"]["state"] == "float32"
    assert {k["kernel"] for k in unit["keys"]} >= {"l2norm_fwd_kernel", "chunk_fwd_kernel_o"}


def test_plan_table_names_kernels_and_totals():
    text = run_cli("plan", "--tp", "1", check=0).stdout
    assert "chunk_gated_delta_rule_fwd_kkt_solve_kernel" in text and "NB=4" in text and "total: 1 unit," in text


def test_plan_from_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "linear_num_key_heads": 16, "linear_num_value_heads": 64, "linear_key_head_dim": 128,
        "linear_value_head_dim": 128, "torch_dtype": "bfloat16", "mamba_ssm_dtype": "float32"}))
    data = json.loads(run_cli("plan", "--config", tmp_path, "--tp", "4", "--json", check=0).stdout)
    assert data["units"][0]["shape"]["HV"] == 16


@pytest.mark.parametrize("args,msg", [
    (["plan", "--model", "gpt-5"], "unknown model 'gpt-5'"),
    (["plan", "--tp", "3"], "TP degree 3 does not divide"),
    (["plan", "--tp", "0"], "positive integer"),
    (["plan", "--tp", "-2"], "positive integer"),
    (["plan", "--tp", "one"], "comma-separated integers"),
    (["plan", "--max-tokens", "-1"], "positive"),
    (["plan", "--tokens", "5,-3"], "positive"),
    (["plan", "--target", "nope"], "unknown target"),
    (["plan", "--config", "/nonexistent/config.json"], "no such file"),
    (["plan", "--model", "qwen3.5-9b", "--config", "x"], "not both"),
    (["bogus"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(args, msg):
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("tp", ["3", "0"])
def test_bad_build_input_writes_nothing(tmp_path, tp):
    cache = tmp_path / "c"
    proc = run_cli("build", "--tp", tp, "--cache-dir", cache)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert not cache.exists()


def test_malformed_config_build_writes_nothing(tmp_path):
    (tmp_path / "config.json").write_text("{")
    proc = run_cli("build", "--config", tmp_path, "--cache-dir", tmp_path / "c")
    assert proc.returncode == 2 and "not a readable JSON" in proc.stderr
    assert not (tmp_path / "c").exists()


def test_piped_messages_are_not_broken_across_lines(tmp_path):
    # rich folds a line at the console width (160 when piped); a long cache path split "verify DIR" in two
    long = tmp_path / ("d" * 170)
    long.mkdir()
    proc = run_cli("verify", long, check=1)
    assert proc.stdout.splitlines()[0] == f"verify {long}"
