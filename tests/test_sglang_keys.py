"""Key fidelity for the `sglang` target against the real SGLang package (0.5.23, installed --no-deps by .ci/run):
its TritonGDNKernel.extend (two requests in one batch, a state pool with slot indices) in a fresh process on the
fake sm_90 GPU must hit exactly what the build wrote."""
import json
import os
import subprocess
import sys

import pytest
from helpers import TESTS, assert_probed, reached_and_planned

from autotune_cache import BuildSpec, build, plan, shapes

pytest.importorskip("sglang.srt.layers.attention.linear.kernels.gdn_triton")
pytestmark = pytest.mark.slow


def serve_sglang(cache, nk, nv, tp, state, env=None):
    proc = subprocess.run([sys.executable, str(TESTS / "serve_sglang.py"), str(cache), str(nk), str(nv), str(tp),
                           state], capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sglang_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("sglang")
    # 1024 tokens: the keys (no T in them) are also timed in a dry probe pass at 512
    spec = BuildSpec(model=shapes.preset("qwen3.5-27b"), tp=(1, 2), targets=("sglang",), max_tokens=1024,
                     cache_dir=str(cache), emulate=True)
    return cache, spec, build(spec, progress=False)


def test_sglang_reached_keys_are_the_planned_keys(sglang_cache):
    _, spec, manifest = sglang_cache
    for unit in plan(spec).units:
        reached, planned = reached_and_planned(manifest, unit)
        assert reached == planned
        assert_probed(sglang_cache[0], manifest, unit)


@pytest.mark.parametrize("tp", [1, 2])
def test_sglang_extend_hits_exactly_the_built_entries(sglang_cache, tp):
    cache, spec, manifest = sglang_cache
    out = serve_sglang(cache, 16, 48, tp, "float32")
    assert [lk["hit"] for lk in out["lookups"]] == [True] and out["configs_benchmarked"] == 0
    unit = next(u for u in plan(spec).units if tp in u.tp)
    assert {lk["dir"] for lk in out["lookups"]} == {f.split("/")[0] for f in manifest.units[unit.id].entries}


def test_sglang_extend_misses_another_model(sglang_cache):
    cache, _, _ = sglang_cache
    # 32 value heads: never built. The negative control of the hit tests stops at the miss, before tuning it (its 6
    # configs are the build's count, asserted by test_sglang_reached_keys_are_the_planned_keys)
    out = serve_sglang(cache, 16, 32, 1, "float32", env={"STOP_AT_FIRST_MISS": "1"})
    assert out["lookups"] == [] and out["first_miss"][0] == "chunk_gated_delta_rule_fwd_kkt_solve_kernel"
    assert out["configs_benchmarked"] == 0
