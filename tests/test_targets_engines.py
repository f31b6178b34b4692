"""The engine targets (vllm, sglang) on the CPU: older kernel layouts are refused in one line naming the supported
versions; vLLM's GDN layer (serve(): varlen batches through ChunkGatedDeltaRule.forward_native) reaches exactly the
keys the plan predicts; bench_modes' traffic is what it says."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune_cache import BuildSpec, plan, shapes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import _kernel_timing as kt  # noqa: E402
import bench_modes  # noqa: E402

OLD = {"vllm": ("vllm/model_executor/layers/fla/ops/__init__.py", "0.25.0", "vLLM >= 0.26"),
       "sglang": ("sglang/srt/layers/attention/fla/chunk.py", "0.5.22", "SGLang >= 0.5.23")}


@pytest.mark.parametrize("target", list(OLD))
def test_an_older_engine_layout_is_refused_naming_the_supported_versions(tmp_path, target):
    module, version, supported = OLD[target]
    path = tmp_path / module
    for parent in [*reversed(path.relative_to(tmp_path).parents)][1:]:
        (tmp_path / parent).mkdir(parents=True, exist_ok=True)
        (tmp_path / parent / "__init__.py").touch()
    path.touch()
    info = tmp_path / f"{target}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {target}\nVersion: {version}\n")
    code = ("from autotune_cache import shapes; from autotune_cache.targets import get; "
            "from autotune_cache.errors import UnsupportedEngineError\n"
            f"t = get({target!r}); s = shapes.preset('qwen3.5-9b').per_rank(1)\n"
            "try:\n    t.run(s, t.default_dtypes(s), 64, 'cpu')\n"
            "except UnsupportedEngineError as e:\n    print(e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = proc.stdout.strip().splitlines()
    assert f"{target} {version}" in line and supported in line, line


def test_traffic_is_varlen_batches_from_1_to_the_largest():
    batches = bench_modes.traffic(32768)
    totals = [sum(b) for b in batches]
    assert totals[0] == 1 and totals[-1] == 32768 and totals == sorted(totals)
    assert all(0 < n for b in batches for n in b) and max(len(b) for b in batches) > 1
    assert batches == bench_modes.traffic(32768)   # the same for every mode


@pytest.mark.slow
def test_vllm_layer_reaches_exactly_the_planned_keys():
    pytest.importorskip("vllm.third_party.flash_linear_attention.ops")
    spec = BuildSpec(model=shapes.preset("qwen3.5-9b"), tp=(2,), targets=("vllm",), max_tokens=1024, emulate=True)
    (unit,) = plan(spec).units
    # first-config: one compile per kernel, no tuning; the configs it records are per key reached
    out = bench_modes.run_serve({"emulate": True, "target": "vllm", "shape": unit.shape.model_dump(),
                                 "dtypes": unit.dtypes, "traffic": bench_modes.traffic(256), "jit_monitor": False,
                                 "cache_dir": "", "mode": "first-config", "warmup": [64]}, timeout=600)
    assert out["first_config_rule"] == "vllm.triton_utils.force_first_config"
    assert set(out["configs"]) == {kt.key_id(k.kernel, k.key) for k in unit.keys}
    assert all(p["configs_benchmarked"] == 0 for p in out["phases"].values())


@pytest.mark.slow
def test_bench_modes_runs_end_to_end_on_the_fake_gpu(tmp_path, toy_caches):
    # the plumbing only (times are fake): every mode served in its own process, each mode's config timed per T
    import json

    cache = toy_caches.copy(tmp_path / "cache")
    out = tmp_path / "modes.json"
    proc = subprocess.run([sys.executable, str(Path(bench_modes.__file__)), "--cache-dir", str(cache), "--target",
                           "toy_target", "--tokens", "3000", "--traffic-max", "3000", "--modes",
                           "ours,first-config,cold", "--plugin", "--jit-monitor", "--repeats", "1", "--emulate",
                           "--json-out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["complete"]   # saved after every part; true only once the whole run was written
    ours, cold = report["modes"]["ours"], report["modes"]["cold"]
    assert ours["loader"]["verified"] and ours["loader"]["totals"]["misses"] == 0
    assert ours["phases"]["traffic"]["keys_tuned"] == [] and ours["phases"]["traffic"]["compiles"] == 0
    tuned = cold["phases"]["traffic"]["keys_tuned"]   # the NB keys the traffic's sizes meet
    assert tuned and cold["phases"]["traffic"]["autotune_prints"] == len(tuned)   # the jit_monitor's lines, one each
    assert report["first_config_rule"] == "vllm.triton_utils.force_first_config"
    (row,) = report["rows"]
    assert set(row["ms"]) == {"ours", "first-config", "cold@T"} and row["sources"]["cold@T"] == "tuned in-process"


def test_vllm_serve_fallback_is_the_call_the_layer_makes():
    # targets/vllm.serve calls the vendored op itself where the GDN layer's module cannot import (no vllm._C on the
    # GPU host): that is only the layer's call while forward_native hands its arguments to this very function
    import inspect

    from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn as gdn

    from autotune_cache.targets.vllm import _ops
    assert gdn.fla_chunk_gated_delta_rule is _ops()[1].chunk_gated_delta_rule
    source = inspect.getsource(gdn.ChunkGatedDeltaRule.forward_native)
    assert "return fla_chunk_gated_delta_rule(" in source and "core_attn_out=core_attn_out" in source
