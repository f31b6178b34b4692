"""Parallel precompilation (issue 6): every config of a key is compiled on a thread pool before the benchmark
loop, and the benchmark then finds exactly those variants: no config is compiled twice, the keys do not change."""
import json
import subprocess
import sys

import pytest
from helpers import TESTS

from autotune_cache import BuildSpec, build, shapes


def check(cache, workers, processes=None):
    extra = [] if processes is None else [str(processes)]
    proc = subprocess.run([sys.executable, str(TESTS / "precompile_check.py"), str(cache), str(workers), *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_precompiled_variants_are_the_ones_benchmarked(tmp_path):
    out = check(tmp_path / "a", 4)
    assert out["enabled"] and out["precompiled"] == {"keys": 1, "configs": 3, "compiled": 3, "errors": 0}
    # 3 configs, each compiled once: had the warm-up specialized differently, the benchmark would compile 3 more
    assert out["compiles"] == 3 and out["benchmarked"] == 3


def test_without_precompile_the_same_compiles_happen_in_the_benchmark(tmp_path):
    out = check(tmp_path / "b", 1)
    assert not out["enabled"] and out["precompiled"] == {"keys": 0, "configs": 0, "compiled": 0, "errors": 0}
    assert out["compiles"] == 3 and out["benchmarked"] == 3


def test_worker_processes_leave_every_config_compiled_in_the_cache(tmp_path):
    out = check(tmp_path / "c", 1, processes=2)
    workers = out["processes"]
    assert (workers["workers"], workers["failed"], sorted(workers["compiled"])) == (2, 0, [1, 2])
    assert workers["import_s"] > 0 and workers["compile_s"] > 0
    # the benchmark loads all 3 configs' binaries that the two workers wrote, compiles none, and no worker wrote
    # a (fake-timed) autotune file: the lookup was a miss, tuned for real here
    assert out["compiles"] == 0 and out["loaded"] == 3 and out["benchmarked"] == 3
    assert len(list((tmp_path / "c").rglob("*.autotune.json"))) == 1


@pytest.mark.parametrize("processes", ["1", "2"])
def test_build_keys_do_not_depend_on_worker_processes(tmp_path, monkeypatch, processes):
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", processes)
    m = build(BuildSpec(model=shapes.preset("qwen3.5-9b"), targets=("toy_target",), max_tokens=2048,
                        cache_dir=str(tmp_path), emulate=True), progress=False)
    assert sorted(m.entries) == sorted(_reference_entries())


@pytest.mark.parametrize("workers", ["1", "4"])
def test_build_keys_do_not_depend_on_precompile(tmp_path, monkeypatch, workers):
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", "1")   # threads only
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_WORKERS", workers)
    m = build(BuildSpec(model=shapes.preset("qwen3.5-9b"), targets=("toy_target",), max_tokens=2048,
                        cache_dir=str(tmp_path), emulate=True), progress=False)
    assert sorted(m.entries) == sorted(_reference_entries())


_REF = {}


def _reference_entries(tp=(1,), max_tokens=2048):
    """The entries of a build without worker processes (threads precompile)."""
    if (tp, max_tokens) not in _REF:
        import tempfile
        d = tempfile.mkdtemp()
        m = build(BuildSpec(model=shapes.preset("qwen3.5-9b"), targets=("toy_target",), tp=tp, max_tokens=max_tokens,
                            cache_dir=d, emulate=True), progress=False)
        _REF[(tp, max_tokens)] = list(m.entries)
    return _REF[(tp, max_tokens)]


def test_build_with_worker_processes_compiles_nothing_in_the_benchmarking_child(tmp_path, monkeypatch):
    # one pool for both units (TP 1 and 2 share the toy keys; 3 NB buckets): the child only loads binaries
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", "2")
    m = build(BuildSpec(model=shapes.preset("qwen3.5-9b"), targets=("toy_target",), tp=(1, 2), max_tokens=3000,
                        cache_dir=str(tmp_path), emulate=True), progress=False)
    first, second = m.units.values()
    # the first unit waited for every unit's configs (TP 2 reaches the same 3 keys: 9 configs in all)
    assert first.precompile["workers"] == 2 and first.precompile["failed"] == 0
    assert first.precompile["seconds"] > 0 and first.precompile["ready_s"] > 0 and first.precompile["import_s"] > 0
    assert first.precompile["compiled"] == 9 and second.precompile is None
    assert first.compiles == 0 and second.compiles == 0
    assert len(m.entries) == 3


def test_overlapped_build_waits_per_unit_and_builds_the_same_entries(tmp_path, monkeypatch):
    # --overlap-compile: each unit waits for its own configs only; the workers go on with the next unit
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", "2")
    m = build(BuildSpec(model=shapes.preset("qwen3.5-9b"), targets=("toy_target",), tp=(1, 2), max_tokens=3000,
                        cache_dir=str(tmp_path), emulate=True, overlap_compile=True), progress=False)
    first, second = m.units.values()
    for unit in (first, second):
        assert unit.precompile["workers"] == 2 and unit.precompile["failed"] == 0 and unit.compiles == 0
    assert second.precompile["ready_s"] >= first.precompile["ready_s"] > 0
    assert sorted(m.entries) == sorted(_reference_entries(tp=(1, 2), max_tokens=3000))


def test_build_without_workers_compiles_in_the_child(tmp_path, monkeypatch):
    # the counter above can see compiles: here the child compiles every config itself
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", "1")
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_WORKERS", "1")
    m = build(BuildSpec(model=shapes.preset("qwen3.5-9b"), targets=("toy_target",), max_tokens=1024,
                        cache_dir=str(tmp_path), emulate=True), progress=False)
    (unit,) = m.units.values()
    assert unit.precompile is None and unit.compiles == 3


def test_workers_share_the_configs_evenly(tmp_path):
    # 3 NB keys of 3 configs, 2 workers: dealt round-robin over all 9 (5 and 4), not 2+1 per key (6 and 3)
    from autotune_cache.builder import precompile
    from autotune_cache.shapes import preset
    unit = {"target": "toy_target", "shape": preset("qwen3.5-9b").per_rank(1).model_dump(),
            "dtypes": {"act": "bfloat16"}, "tokens": [3000, 2000, 1000, 3000]}
    report = precompile.compile_in_processes(str(tmp_path), [unit], 2)
    assert report["failed"] == 0 and sorted(report["compiled"]) == [4, 5]


def test_units_are_ready_one_after_another_and_a_killed_pool_releases_the_wait(tmp_path):
    from autotune_cache.builder import precompile
    from autotune_cache.shapes import preset
    shape = preset("qwen3.5-9b").per_rank(1).model_dump()
    units = [{"target": "toy_target", "shape": shape, "dtypes": {"act": "bfloat16"}, "tokens": [t]}
             for t in (1000, 2000, 3000)]
    pool = precompile.Pool(str(tmp_path / "a"), units, 2)
    try:
        pool.go()
        first = pool.ready(0)
        assert first["failed"] == 0 and first["compiled"] >= 3 and first["ready_s"] > 0
        assert pool.ready(2)["compiled"] == 9
        assert pool.wait()["failed"] == 0
    finally:
        pool.close()
    # killed before it finished: the wait ends, every worker counts as failed, nothing is left running
    pool = precompile.Pool(str(tmp_path / "b"), units, 2)
    try:
        pool.close()
        assert pool.ready(0)["failed"] == 2
    finally:
        pool.close()


def test_failed_workers_are_counted_with_their_error(tmp_path):
    # the zygote cannot import the target: every worker counts as failed, and the report says why
    from autotune_cache.builder import precompile
    from autotune_cache.shapes import preset
    unit = {"target": "no_such_target", "shape": preset("qwen3.5-9b").per_rank(1).model_dump(),
            "dtypes": {"act": "bfloat16"}, "tokens": [1000]}
    pool = precompile.Pool(str(tmp_path), [unit], 2)
    try:
        pool.go()
        report = pool.ready(0)
    finally:
        pool.close()
    assert report["failed"] == 2 and "unknown target 'no_such_target'" in report["error"]


def test_workers_emulate_the_profile_they_are_given(tmp_path):
    # another GPU than the default H100 (sm_80, 108 SMs, 164 KB shared memory): the compiled kernels are for it
    import dataclasses
    import json as _json

    from autotune_cache.builder import device, precompile
    from autotune_cache.shapes import preset
    a100 = dataclasses.replace(device.H100, name="NVIDIA A100-SXM4-80GB", major=8, minor=0, multiprocessor_count=108,
                               max_shared_mem=166912)
    unit = {"target": "toy_target", "shape": preset("qwen3.5-9b").per_rank(1).model_dump(),
            "dtypes": {"act": "bfloat16"}, "tokens": [1000]}
    report = precompile.compile_in_processes(str(tmp_path), [unit], 2, a100.to_dict())
    assert report["failed"] == 0 and sum(report["compiled"]) == 3
    targets = {_json.loads(p.read_text())["target"]["arch"] for p in tmp_path.rglob("*.json")
               if "target" in _json.loads(p.read_text())}
    assert targets == {80}
