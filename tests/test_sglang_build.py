"""An `sglang` build (qwen3.5-27b TP 1, SGLang 0.5.23's vendored FLA) on the fake sm_90 GPU with compile worker
processes, as a GPU build runs them: the two defects seen on an H200.

(b) The build warned that the benchmarking child compiled a kernel the workers had not left in the cache. Cause:
the child drives each unit at the probe token count (512) before its own, the workers drove only the unit's own.
SGLang's chunk_h kernel takes NT_BUCKET (a constexpr: 0 up to 32 chunks, 1 up to 128, 2 beyond), so 512 tokens
are another compile than 4096 or 16384. Now the workers make the probe calls too.

(a) "plan predicts 1 key, the build writes 2 autotune entries": the unit writes exactly its planned key, one
autotune file in a fresh dir; the second entry was another plan's, already in that dir (the build's summary line
counts the whole manifest's entries against this plan's units)."""
import sys
from pathlib import Path

import pytest
from helpers import assert_only_entries_on_disk, reached_and_planned, run_cli

from autotune_cache import BuildSpec, build, plan, shapes

pytest.importorskip("sglang.kernels.ops.attention.fla.chunk")
pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

# 4096 tokens = 64 chunks: NT_BUCKET 1 at the unit's count, 0 at the 512-token probe
SPEC = dict(model=shapes.preset("qwen3.5-27b"), targets=("sglang",), max_tokens=4096, emulate=True)


@pytest.fixture(scope="module")
def sglang_tp1(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", "2")   # emulated builds default to threads
    try:
        cache = tmp_path_factory.mktemp("sglang-tp1")
        spec = BuildSpec(tp=(1,), cache_dir=str(cache), **SPEC)
        return cache, spec, build(spec, progress=False)
    finally:
        mp.undo()


def test_compile_workers_leave_every_kernel_the_child_needs(sglang_tp1):
    _, _, manifest = sglang_tp1
    (unit,) = manifest.units.values()
    assert unit.precompile["workers"] == 2 and unit.precompile["failed"] == 0, unit.precompile
    assert unit.compiles == 0   # 1 before the workers drove the probe pass


def test_the_probe_counts_the_workers_drive_are_the_childs():
    from autotune_cache.builder.precompile import probe_counts
    assert probe_counts([4096], (512,)) == [512]
    assert probe_counts([512], (512,)) == []                 # not below the unit's largest: no probe pass
    assert probe_counts([1000, 3000], (2048, 512, 512)) == [512, 2048]


def test_a_fresh_dir_holds_exactly_the_planned_key(sglang_tp1):
    cache, spec, manifest = sglang_tp1
    (unit,) = plan(spec).units
    reached, planned = reached_and_planned(manifest, unit)
    assert reached == planned and len(planned) == 1
    assert len(manifest.entries) == 1
    assert_only_entries_on_disk(cache, manifest)


def test_build_summary_counts_this_plans_entries(sglang_tp1, tmp_path):
    import shutil
    cache = tmp_path / "c"
    shutil.copytree(sglang_tp1[0], cache, symlinks=True)
    proc = run_cli("build", "--model", "qwen3.5-27b", "--tp", "2", "--target", "sglang", "--max-tokens", "4096",
                   "--emulate", "--no-progress", "--cache-dir", cache, env={"AUTOTUNE_CACHE_COMPILE_PROCESSES": "1"},
                   check=0)
    assert "1 key," in proc.stderr
    assert "built 1 unit, 1 autotune entry" in proc.stdout, proc.stdout


@pytest.mark.parametrize("mode", ["ours", "plugin"])
def test_sglang_layer_serves_varlen_batches_without_tuning_or_compiling(sglang_tp1, mode):
    # SGLang's own TritonGDNKernel.extend, batches of 1 to 4096 tokens in up to 8 requests: every chunk_h NT_BUCKET
    # below the build's largest prefill was compiled by the build (the CPU version of tests/gpu/test_engines.py)
    import bench_modes
    cache, spec, _ = sglang_tp1
    shape = spec.model.per_rank(1)
    out = bench_modes.run_serve({"emulate": True, "target": "sglang", "shape": shape.model_dump(),
                                 "dtypes": {"act": "bfloat16", "state": "float32", "g": "float32", "beta": "float32",
                                            "index": "int32"},
                                 "traffic": bench_modes.traffic(4096), "jit_monitor": False, "cache_dir": str(cache),
                                 "mode": mode, "warmup": [64]}, timeout=600)
    assert out["loader"]["verified"] and out["loader"]["totals"]["hits"] > 0
    done = {name: (p["configs_benchmarked"], p["compiles"], p["compiled"]) for name, p in out["phases"].items()}
    assert all(p[:2] == (0, 0) for p in done.values()), done
