"""Key fidelity for the upstream FLA target: the builder tunes exactly the keys a serving process looks up.

Real fla-core kernels compiled for a fake sm_90 GPU (FACTS.md §2). With the GPU host's triton_key and backend
hash, the cache directory names must equal byte for byte those the GPU host wrote for the same serving call."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import FLA_DEVICE_KEYS, TESTS, assert_each_spec_reached_its_plan, assert_probed, fla_specs

from autotune_cache import plan
from autotune_cache.cache import manifest as manifest_mod

pytest.importorskip("fla")
DEVICE_KEYS = FLA_DEVICE_KEYS
pytestmark = pytest.mark.slow


def serve(cache, H, HV, state_dtype, tokens, env=None):
    proc = subprocess.run([sys.executable, str(TESTS / "serve_fla.py"), str(cache), str(H), str(HV), state_dtype,
                           ",".join(map(str, tokens))], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "AUTOTUNE_CACHE_DEVICE_KEYS": str(DEVICE_KEYS), **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fla_cache(tmp_path_factory, toy_caches):
    cache = toy_caches.fla(tmp_path_factory.mktemp("fla") / "cache")   # built once per run (conftest)
    return cache, fla_specs(cache), manifest_mod.load(cache)


def test_reached_keys_are_exactly_the_planned_keys(fla_cache):
    cache, specs, manifest = fla_cache
    assert all(sum(k.configs for k in plan(s).units[0].keys) == 59 for s in specs)
    assert_each_spec_reached_its_plan(manifest, specs, configs=59)
    assert_probed(cache, manifest, plan(specs[0]).units[0])


def test_disk_keys_equal_the_gpu_hosts(fla_cache):
    cache, specs, manifest = fla_cache
    expected = json.loads(DEVICE_KEYS.read_text())["autotune_dirs"]
    (unit,) = plan(specs[0]).units
    got = {manifest.entries[f].kernel: f.split("/")[0] for f in manifest.units[unit.id].entries}
    assert got == expected


@pytest.mark.parametrize("H,HV,state,tokens", [(16, 32, "float32", (16, 64)), (2, 4, "bfloat16", (7, 64))])
def test_a_serving_process_hits_everything(fla_cache, H, HV, state, tokens):
    cache, specs, _ = fla_cache
    if (H, HV) == (2, 4) and len(specs) == 1:
        pytest.skip("qwen3-next-80b-a3b TP 8 is built by the suite, not by a matrix leg (helpers.fla_specs)")
    report = serve(cache, H, HV, state, tokens)
    assert len(report["kernels"]) == 6
    assert all(s["hits"] == s["lookups"] >= 1 and s["benchmarks"] == 0 for s in report["kernels"].values())
    assert report["configs_benchmarked"] == 0


def test_an_unbuilt_shape_misses(fla_cache):
    # TP 4 was never built: the same server misses (the hit tests can fail); it stops at the first miss, before
    # tuning it (tuning the whole miss is the deep run's test below)
    cache, _, _ = fla_cache
    report = serve(cache, 4, 8, "float32", (64,), env={"STOP_AT_FIRST_MISS": "1"})
    assert report["first_miss"] and report["configs_benchmarked"] == 0


@pytest.mark.deep
def test_an_unbuilt_shape_is_tuned(fla_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(fla_cache[0], cache)   # the miss writes its entries: into a copy, not the shared cache
    report = serve(cache, 4, 8, "float32", (64,))
    assert report["configs_benchmarked"] > 0
