"""On a CUDA GPU, the engines' own kernels from their Python sources (../shared/engines-py312/README.md; vLLM 0.33 and
SGLang 0.5.23 on PYTHONPATH): `build --target vllm` (qwen3.5-9b TP 1, 2) and `--target sglang` (qwen3.5-27b TP 1,
2), then fresh serving processes (scripts/bench_modes.py serve) calling each engine's chunk_gated_delta_rule as its
GDN layer does, over varlen batches of 1 to 32768 tokens, through install() and through the vLLM plugin's
register(): 0 benchmarks, 0 compiles (Triton's compilation listener: ptxas runs included). vLLM's jit_monitor is
activated after the warmup (vLLM's profile_run call, T=64) as a vLLM worker activates it: 0 autotune events and 0
compiles reported with the cache; without it (no plugin), it reports the misses. AUTOTUNE_CACHE_GPU_DIR keeps the
caches (one subdir per target)."""
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import assert_only_entries_on_disk, reached_and_planned

from autotune_cache import BuildSpec, build, plan, shapes

pytestmark = pytest.mark.gpu
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import bench_modes  # noqa: E402

ENGINES = {"vllm": ("vllm.third_party.flash_linear_attention.ops", "qwen3.5-9b"),
           "sglang": ("sglang.kernels.ops.attention.fla.chunk", "qwen3.5-27b")}
TRAFFIC = bench_modes.traffic(32768)


def _importable(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


@pytest.fixture(scope="module", params=list(ENGINES))
def engine_cache(request):
    target = request.param
    module, model = ENGINES[target]
    if not _importable(module):
        pytest.skip(f"{target}'s sources are not on PYTHONPATH (scripts/gpu_engines.sh puts them there)")
    root = os.environ.get("AUTOTUNE_CACHE_GPU_DIR") or tempfile.mkdtemp(prefix="autotune-cache-engines-")
    spec = BuildSpec(model=shapes.preset(model), tp=(1, 2), targets=(target,), cache_dir=str(Path(root) / target))
    return target, spec, build(spec, progress=False)


def serve(target, model, tp, mode, cache_dir, warmup=(64,)):
    shape = shapes.preset(model).per_rank(tp)
    from autotune_cache.targets import get
    return bench_modes.run_serve({"emulate": False, "target": target, "shape": shape.model_dump(),
                                  "dtypes": get(target).default_dtypes(shape), "traffic": TRAFFIC,
                                  "jit_monitor": _importable("vllm.utils.jit_monitor"), "cache_dir": str(cache_dir),
                                  "mode": mode, "warmup": list(warmup)}, timeout=900)


def test_build_writes_exactly_the_planned_keys_and_compiles_nothing_in_the_child(engine_cache):
    target, spec, manifest = engine_cache
    assert {u.status for u in manifest.units.values()} == {"done"}
    assert_only_entries_on_disk(spec.cache_dir, manifest)
    for unit in plan(spec).units:
        reached, planned = reached_and_planned(manifest, unit)
        assert reached == planned, (unit.id, reached, planned)
        assert manifest.units[unit.id].compiles == 0, (unit.id, manifest.units[unit.id].precompile)
    assert len(manifest.entries) == sum(len(u.keys) for u in plan(spec).units)


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("mode", ["ours", "plugin"])
def test_fresh_process_serves_varlen_traffic_without_tuning_or_compiling(engine_cache, tp, mode):
    target, spec, _ = engine_cache
    out = serve(target, spec.model.name, tp, mode, spec.cache_dir)
    print(f"\n{target} TP {tp} {mode}: " + json.dumps({k: out["phases"][k] for k in ("warmup", "traffic")}))
    assert out["loader"]["verified"] and not out["loader"]["refused"], out["loader"]
    assert out["loader"]["totals"]["hits"] > 0 and out["loader"]["totals"]["misses"] == 0, out["loader"]
    for phase in ("warmup", "traffic"):
        p = out["phases"][phase]
        assert p["configs_benchmarked"] == 0 and p["compiles"] == 0, (phase, p)
    if "jit_monitor" in out:   # vLLM's monitor: no autotune, and nothing it saw was compiled
        t = out["phases"]["traffic"]
        assert t["autotune_prints"] == 0 and t["jit_monitor_events"] == t["jit_monitor_loads"], t


def test_jit_monitor_reports_the_misses_without_the_cache(engine_cache):
    target, spec, _ = engine_cache
    if not _importable("vllm.utils.jit_monitor"):
        pytest.skip("vLLM's sources are not on PYTHONPATH")
    out = serve(target, spec.model.name, 1, "none", spec.cache_dir, warmup=())   # no plugin, nothing warmed
    t = out["phases"]["traffic"]
    print(f"\n{target} TP 1 without the cache: {json.dumps(t)}")
    assert t["configs_benchmarked"] > 0 and t["compiles"] > 0
    assert t["autotune_prints"] > 0 and t["jit_monitor_events"] > t["jit_monitor_loads"]
