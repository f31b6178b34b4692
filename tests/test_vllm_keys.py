"""Key fidelity for the `vllm` target against the real vLLM package (0.33.0, installed --no-deps by .ci/run).

The serving path is vLLM's own code: QwenGatedDeltaNetAttention._warmup_prefill_kernels (what every GDN layer runs
in profile_run, through the Triton prefill call), run in a fresh process on the fake sm_90 GPU. The build tunes at
another token count (no vLLM key holds T) and must produce exactly the disk entries that path looks up."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import TESTS, assert_each_spec_reached_its_plan, assert_probed

from autotune_cache import BuildSpec, build, plan, shapes

pytest.importorskip("vllm.third_party.flash_linear_attention.ops")
pytestmark = pytest.mark.slow


def serve_vllm(cache, nk, nv, tp, state, env=None):
    proc = subprocess.run([sys.executable, str(TESTS / "serve_vllm.py"), str(cache), str(nk), str(nv), str(tp), state],
                          capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def vllm_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("vllm")
    # 1024 tokens: the first spec's keys are also timed in a dry probe pass at 512 (vLLM's keys hold no T)
    specs = [BuildSpec(model=shapes.preset("qwen3.5-9b"), tp=(2,), targets=("vllm",), max_tokens=1024,
                       cache_dir=str(cache), emulate=True),
             BuildSpec(model=shapes.preset("qwen3-next-80b-a3b"), tp=(8,), targets=("vllm",), max_tokens=512,
                       cache_dir=str(cache), emulate=True)]
    manifest = None
    for spec in specs:
        manifest = build(spec, progress=False)
    return cache, specs, manifest


def test_vllm_reached_keys_are_the_planned_keys(vllm_cache):
    _, specs, manifest = vllm_cache
    assert_each_spec_reached_its_plan(manifest, specs, configs=88)   # FACTS.md §3, SM >= 90
    assert_probed(vllm_cache[0], manifest, plan(specs[0]).units[0])


@pytest.mark.parametrize("model,nk,nv,tp,state", [("qwen3.5-9b", 16, 32, 2, "float32"),
                                                  ("qwen3-next-80b-a3b", 16, 32, 8, "bfloat16")])
def test_vllm_warmup_hits_exactly_the_built_entries(vllm_cache, model, nk, nv, tp, state):
    cache, specs, manifest = vllm_cache
    out = serve_vllm(cache, nk, nv, tp, state)
    assert len(out["lookups"]) == 6 and all(lk["hit"] for lk in out["lookups"])
    assert out["configs_benchmarked"] == 0
    spec = next(s for s in specs if s.model.name == model)
    (unit,) = plan(spec).units
    assert {lk["dir"] for lk in out["lookups"]} == {f.split("/")[0] for f in manifest.units[unit.id].entries}


def test_vllm_warmup_misses_an_unbuilt_tp(vllm_cache):
    # the negative control of the hit tests: TP 4 was never built, so its first lookup misses; the server stops
    # there, before tuning (the whole miss, 88 configs compiled, is the deep run's test below)
    cache, _, _ = vllm_cache
    out = serve_vllm(cache, 16, 32, 4, "float32", env={"STOP_AT_FIRST_MISS": "1"})
    assert not any(lk["hit"] for lk in out["lookups"]) and out["first_miss"] and out["configs_benchmarked"] == 0


@pytest.mark.deep
def test_vllm_warmup_tunes_every_key_of_an_unbuilt_tp(tmp_path, vllm_cache):
    cache = tmp_path / "cache"
    shutil.copytree(vllm_cache[0], cache)   # the miss writes its entries: into a copy, not the shared cache
    out = serve_vllm(cache, 16, 32, 4, "float32")
    assert not any(lk["hit"] for lk in out["lookups"]) and out["configs_benchmarked"] == 88
