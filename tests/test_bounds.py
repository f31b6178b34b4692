"""Bounds on every size the tool accepts, and config.json paths that are not small regular files. Each bound: at its
limit accepted, one past it refused with exit 2 and one line naming the limit, nothing written. Whatever could hang
or grow without end before the fix runs in a subprocess with a deadline and a memory cap (helpers.run_cli_bounded),
so a regression fails the test instead of the machine."""
import json
import os
import socket
import tempfile

import pytest
from helpers import run_cli_bounded

from autotune_cache import shapes
from autotune_cache.builder.plan import plan
from autotune_cache.builder.selection import MAX_PROBES
from autotune_cache.builder.spec import (
    MAX_GPUS,
    MAX_PLAN_CALLS,
    MAX_PLAN_KEYS,
    MAX_RETRIES,
    MAX_UNIT_TIMEOUT_S,
    BuildSpec,
)
from autotune_cache.cli import main, parser
from autotune_cache.cli.args import spec_from_args
from autotune_cache.errors import ConfigError, SpecError
from autotune_cache.shapes import CONFIG_MAX_BYTES, MAX_HEAD_DIM, MAX_HEADS, MAX_TOKENS, MAX_TP

GDN = {"linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
       "linear_value_head_dim": 128, "torch_dtype": "bfloat16"}


def config(tmp_path, name="config.json", **fields):
    path = tmp_path / name
    path.write_text(json.dumps({**GDN, **fields}))
    return path


def refused(capsys, *argv) -> str:
    """The CLI in this process: exit 2, nothing on stdout, one line on stderr (returned)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "", err
    (line,) = err.strip().splitlines()
    return line


def assert_refused(proc, msg):
    """A CLI subprocess (run_cli_bounded) refused its input: exit 2, one line naming `msg`, nothing on stdout."""
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert msg in line and proc.stdout == "", line


def build_spec(*flags) -> BuildSpec:
    """The BuildSpec `build` would make from these flags (nothing built)."""
    return spec_from_args(parser().parse_args(["build", "--cache-dir", "unused", "--emulate", *map(str, flags)]))


def counts(first, last) -> str:
    return ",".join(map(str, range(first, last + 1)))


@pytest.fixture
def no_build(monkeypatch):
    """A build that would start fails the test instead (before the bounds, `build` took these flags and ran)."""
    from autotune_cache.builder import orchestrator

    def started(*args, **kwargs):
        raise AssertionError("a build started")
    monkeypatch.setattr(orchestrator, "Build", started)
    monkeypatch.setattr(orchestrator, "prepare_cache_dir", started)


# -- flags ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,msg", [
    (["--max-tokens", MAX_TOKENS + 1], f"--max-tokens must be at most {MAX_TOKENS}, got {MAX_TOKENS + 1}"),
    (["--tokens", f"64,{MAX_TOKENS + 1}"], f"each token count must be at most {MAX_TOKENS}, got {MAX_TOKENS + 1}"),
    (["--tp", MAX_TP * 2], f"TP degree must be at most {MAX_TP}, got {MAX_TP * 2}"),
    (["--tp", MAX_TP + 1], f"TP degree must be at most {MAX_TP}, got {MAX_TP + 1}"),
    (["--retries", MAX_RETRIES + 1], f"retries must be at most {MAX_RETRIES}, got {MAX_RETRIES + 1}"),
    (["--gpus", MAX_GPUS + 1], f"--gpus must be at most {MAX_GPUS}, got {MAX_GPUS + 1}"),
    (["--timeout", MAX_UNIT_TIMEOUT_S + 1], f"unit timeout must be at most {MAX_UNIT_TIMEOUT_S:g} seconds"),
    (["--timeout", "inf"], f"unit timeout must be at most {MAX_UNIT_TIMEOUT_S:g} seconds, got inf"),
    (["--noise", "1"], "--noise must be at least 0 and less than 1, got 1.0"),
    (["--noise", "-0.001"], "--noise must be at least 0 and less than 1"),
    (["--noise", "nan"], "--noise must be at least 0 and less than 1, got nan"),
    (["--probe-tokens", MAX_TOKENS + 1], f"each probe token count must be at most {MAX_TOKENS}, got {MAX_TOKENS + 1}"),
    (["--probe-tokens", counts(1, MAX_PROBES + 1)], f"at most {MAX_PROBES} probe token counts, got {MAX_PROBES + 1}"),
])
def test_a_flag_past_its_bound_is_refused_naming_it_and_nothing_is_written(tmp_path, capsys, no_build, flags, msg):
    cache = tmp_path / "c"
    assert msg in refused(capsys, "build", "--cache-dir", cache, "--emulate", *flags)
    assert not cache.exists()


def test_every_flag_at_its_bound_is_accepted():
    spec = build_spec("--max-tokens", MAX_TOKENS, "--tokens", MAX_TOKENS, "--tp", MAX_TP, "--retries", MAX_RETRIES,
                      "--gpus", MAX_GPUS, "--timeout", MAX_UNIT_TIMEOUT_S, "--noise", "0.999",
                      "--probe-tokens", counts(MAX_TOKENS - MAX_PROBES + 1, MAX_TOKENS))
    assert (spec.max_tokens, spec.tokens, spec.tp, spec.retries, spec.gpus, spec.unit_timeout_s) == (
        MAX_TOKENS, (MAX_TOKENS,), (MAX_TP,), MAX_RETRIES, MAX_GPUS, MAX_UNIT_TIMEOUT_S)
    assert spec.selection.noise == 0.999 and len(spec.selection.probe_tokens) == MAX_PROBES


def test_plan_at_the_token_bound(capsys):
    assert main(["plan", "--max-tokens", str(MAX_TOKENS), "--json"]) == 0
    (unit,) = json.loads(capsys.readouterr().out)["units"]
    assert unit["tokens"][0] == MAX_TOKENS and len(unit["tokens"]) == MAX_TOKENS * 16 // 65536


def test_the_reviewers_max_tokens_returns_at_once_and_small(tmp_path):
    # It ran to 22 GB: in a subprocess capped at 2 GiB and a minute, it must be refused, not crash or hang.
    assert_refused(run_cli_bounded("plan", "--max-tokens", "99999999999"),
                   f"autotune-cache: error: --max-tokens must be at most {MAX_TOKENS}, got 99999999999")


def test_python_api_bounds_are_the_same():
    model = shapes.preset("qwen3.5-9b")
    with pytest.raises(SpecError, match=f"--max-tokens must be at most {MAX_TOKENS}"):
        BuildSpec(model=model, max_tokens=10 ** 5000)   # past Python's int-to-str limit: still one clear message
    with pytest.raises(SpecError, match=f"TP degree must be at most {MAX_TP}"):
        model.per_rank(MAX_TP * 16)
    with pytest.raises(SpecError, match=f"num_v_heads must be at most {MAX_HEADS}"):
        shapes.ModelShape(name="x", num_k_heads=16, num_v_heads=MAX_HEADS + 1)
    with pytest.raises(SpecError, match=f"head_k_dim must be at most {MAX_HEAD_DIM}"):
        shapes.ModelShape(name="x", num_k_heads=16, num_v_heads=16, head_k_dim=MAX_HEAD_DIM + 1)
    assert shapes.ModelShape(name="x", num_k_heads=MAX_HEADS, num_v_heads=MAX_HEADS, head_k_dim=MAX_HEAD_DIM,
                             head_v_dim=MAX_HEAD_DIM).per_rank(MAX_TP).H == MAX_HEADS // MAX_TP


# -- the plan's size ------------------------------------------------------------------------------------------------
def test_plan_at_the_call_bound_is_accepted_and_one_past_is_refused(capsys):
    # qwen3.5-9b at 16384 tokens drives 4096, 8192, 12288 and 16384; --tokens 1..N adds N - 2 more
    n = MAX_PLAN_CALLS - 2
    assert main(["plan", "--tokens", counts(1, n), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["units"][0]["tokens"]) == MAX_PLAN_CALLS
    line = refused(capsys, "plan", "--tokens", counts(1, n + 1))
    assert f"more than {MAX_PLAN_CALLS} serving calls" in line and "the most a plan may have" in line


def test_plan_at_the_key_bound_is_accepted_and_one_past_is_refused(tmp_path, capsys):
    # 640 key heads: one l2norm bucket per 1024 tokens; 5 more kernels with one key each
    buckets = MAX_PLAN_KEYS - 5
    cfg = config(tmp_path, linear_num_key_heads=640, linear_num_value_heads=640)
    assert main(["plan", "--config", str(cfg), "--max-tokens", str(buckets * 65536 // 640), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["keys"] == MAX_PLAN_KEYS
    line = refused(capsys, "plan", "--config", cfg, "--max-tokens", buckets * 65536 // 640 + 1)
    assert f"more than {MAX_PLAN_KEYS} (kernel, key) pairs" in line


def test_the_largest_model_at_the_largest_prefill_is_refused_before_it_is_planned(tmp_path):
    # 4096 heads at 1M tokens: 65,536 buckets at TP 1. Refused as the plan is made, within a minute and 2 GiB.
    cfg = config(tmp_path, linear_num_key_heads=MAX_HEADS, linear_num_value_heads=MAX_HEADS)
    proc = run_cli_bounded("plan", "--config", cfg, "--max-tokens", MAX_TOKENS, "--tp", "1,2,4,8", "--target",
                           "fla,vllm,sglang")
    assert_refused(proc, f"more than {MAX_PLAN_CALLS} serving calls")


def test_every_plan_made_stays_within_its_bounds():
    p = plan(BuildSpec(model=shapes.preset("qwen3.5-397b-a17b"), tp=(1, 2, 4, 8, 16), max_tokens=MAX_TOKENS,
                       targets=("fla", "vllm", "sglang")))
    assert p.keys <= MAX_PLAN_KEYS and sum(len(u.tokens) for u in p.units) <= MAX_PLAN_CALLS


# -- config.json fields ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,bound", [("linear_num_key_heads", MAX_HEADS), ("linear_num_value_heads", MAX_HEADS),
                                         ("linear_key_head_dim", MAX_HEAD_DIM),
                                         ("linear_value_head_dim", MAX_HEAD_DIM)])
def test_config_sizes_at_and_past_their_bound(tmp_path, field, bound):
    at = shapes.from_config(config(tmp_path, **{field: bound}))
    assert bound in (at.num_k_heads, at.num_v_heads, at.head_k_dim, at.head_v_dim)
    for past in (bound + 1, 2 ** 31):
        with pytest.raises(ConfigError, match=f"config.json: {field} must be at most {bound}, got {past}$"):
            shapes.from_config(config(tmp_path, **{field: past}))


def test_config_with_2_31_heads_returns_at_once(tmp_path):
    # it exhausted memory: in a subprocess capped at 2 GiB and a minute, one line and exit 2
    assert_refused(run_cli_bounded("plan", "--config", config(tmp_path, linear_num_key_heads=2 ** 31)),
                   f"linear_num_key_heads must be at most {MAX_HEADS}, got {2 ** 31}")


def test_config_tp_at_its_bound_divides_the_largest_model(tmp_path, capsys):
    cfg = config(tmp_path, linear_num_key_heads=MAX_HEADS, linear_num_value_heads=MAX_HEADS)
    assert main(["plan", "--config", str(cfg), "--tp", str(MAX_TP), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["units"][0]["shape"]["H"] == MAX_HEADS // MAX_TP


@pytest.mark.parametrize("value", [0, -1, 1.5, "128", True, None, [128]])
def test_config_head_dim_must_be_a_positive_int(tmp_path, value):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(GDN)[:-1] + f', "linear_key_head_dim": {json.dumps(value)}}}')
    with pytest.raises(ConfigError, match="linear_key_head_dim must be a positive integer"):
        shapes.from_config(path)


# -- config.json files that are not small regular files -------------------------------------------------------------
@pytest.mark.parametrize("as_dir", [False, True], ids=["file", "snapshot-dir"])
def test_a_fifo_config_is_refused_without_blocking(tmp_path, as_dir):
    os.mkfifo(tmp_path / "config.json")   # nobody writes it: opening or reading it would block forever
    proc = run_cli_bounded("plan", "--config", tmp_path if as_dir else tmp_path / "config.json", timeout=30)
    assert_refused(proc, "config.json: a FIFO; a config.json must be a regular file")


def test_dev_zero_is_refused_without_reading_it():
    assert_refused(run_cli_bounded("plan", "--config", "/dev/zero", timeout=30),
                   "/dev/zero: a device; a config.json must be a regular file")


def test_a_socket_is_refused():
    with tempfile.TemporaryDirectory(dir="/tmp") as d, socket.socket(socket.AF_UNIX) as s:
        s.bind(os.path.join(d, "config.json"))
        with pytest.raises(ConfigError, match="a socket; a config.json must be a regular file"):
            shapes.from_config(d)


def test_a_huge_sparse_config_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "config.json"
    with open(path, "wb") as f:
        f.truncate(64 << 30)   # 64 GiB of holes: no disk used, and no reading it all
    assert_refused(run_cli_bounded("build", "--config", path, "--cache-dir", tmp_path / "c", timeout=30),
                   f"larger than {CONFIG_MAX_BYTES >> 20} MiB")
    assert not (tmp_path / "c").exists()


def test_config_at_the_size_cap_is_read_and_one_byte_more_is_refused(tmp_path):
    text = json.dumps(GDN)
    path = tmp_path / "config.json"
    path.write_text(text + " " * (CONFIG_MAX_BYTES - len(text)))
    assert shapes.from_config(path).num_k_heads == 16
    path.write_text(text + " " * (CONFIG_MAX_BYTES + 1 - len(text)))
    with pytest.raises(ConfigError, match=f"larger than {CONFIG_MAX_BYTES >> 20} MiB"):
        shapes.from_config(path)


def test_a_symlinked_config_is_read(tmp_path):
    # Hugging Face snapshot dirs: config.json -> ../../blobs/<sha>
    (tmp_path / "blob").write_text(json.dumps(GDN))
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "config.json").symlink_to(tmp_path / "blob")
    assert shapes.from_config(tmp_path / "snap").num_v_heads == 32


@pytest.mark.parametrize("content,msg", [
    ("[" * 100_000 + "]" * 100_000, "nested deeper than"),
    ('{"text_config": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper than"),
    (b'{"linear_num_key_heads": 16, "x": "\xff\xfe"}', "not UTF-8"),
    ('{"linear_num_key_heads": ' + "1" * 5000 + "}", "not a readable JSON file"),
], ids=["deep", "deep-inside", "latin-1", "5000-digits"])
def test_config_content_that_cannot_be_parsed_is_a_config_error(tmp_path, content, msg):
    path = tmp_path / "config.json"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(ConfigError, match=msg):
        shapes.from_config(path)
