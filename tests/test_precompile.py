"""Parallel precompilation (issue 6): every config of a key is compiled on a thread pool before the benchmark
loop, and the benchmark then finds exactly those variants: no config is compiled twice, the keys do not change."""
import json
import subprocess
import sys

import pytest

from autotune_cache import BuildSpec, build, models
from helpers import TESTS


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
    assert (workers["workers"], workers["failed"], workers["units_done"]) == (2, 0, 1)
    assert workers["import_s"] > 0 and workers["compile_s"] > 0
    # the benchmark loads all 3 configs' binaries that the two workers wrote, compiles none, and no worker wrote
    # a (fake-timed) autotune file: the lookup was a miss, tuned for real here
    assert out["compiles"] == 0 and out["loaded"] == 3 and out["benchmarked"] == 3
    assert len(list((tmp_path / "c").rglob("*.autotune.json"))) == 1


@pytest.mark.parametrize("processes", ["1", "2"])
def test_build_keys_do_not_depend_on_worker_processes(tmp_path, monkeypatch, processes):
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", processes)
    m = build(BuildSpec(model=models.preset("qwen3.5-9b"), targets=("toy_target",), max_tokens=2048,
                        cache_dir=str(tmp_path), emulate=True), progress=False)
    assert sorted(m.entries) == sorted(_reference_entries())


@pytest.mark.parametrize("workers", ["1", "4"])
def test_build_keys_do_not_depend_on_precompile(tmp_path, monkeypatch, workers):
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", "1")   # threads only
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_WORKERS", workers)
    m = build(BuildSpec(model=models.preset("qwen3.5-9b"), targets=("toy_target",), max_tokens=2048,
                        cache_dir=str(tmp_path), emulate=True), progress=False)
    assert sorted(m.entries) == sorted(_reference_entries())


_REF = {}


def _reference_entries():
    if "entries" not in _REF:
        import tempfile
        d = tempfile.mkdtemp()
        m = build(BuildSpec(model=models.preset("qwen3.5-9b"), targets=("toy_target",), max_tokens=2048,
                            cache_dir=d, emulate=True), progress=False)
        _REF["entries"] = list(m.entries)
    return _REF["entries"]


def test_build_with_worker_processes_compiles_nothing_in_the_benchmarking_child(tmp_path, monkeypatch):
    # one pool for both units (TP 1 and 2 share the toy keys; 3 NB buckets): the child only loads binaries
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", "2")
    m = build(BuildSpec(model=models.preset("qwen3.5-9b"), targets=("toy_target",), tp=(1, 2), max_tokens=3000,
                        cache_dir=str(tmp_path), emulate=True), progress=False)
    first, second = m.units.values()
    assert first.precompile["workers"] == 2 and first.precompile["failed"] == 0
    assert first.precompile["units_done"] == 2 and second.precompile is None
    assert first.precompile["seconds"] >= first.precompile["compile_s"] > 0
    assert first.compiles == 0 and second.compiles == 0
    assert len(m.entries) == 3


def test_build_without_workers_compiles_in_the_child(tmp_path, monkeypatch):
    # the counter above can see compiles: here the child compiles every config itself
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", "1")
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_WORKERS", "1")
    m = build(BuildSpec(model=models.preset("qwen3.5-9b"), targets=("toy_target",), max_tokens=1024,
                        cache_dir=str(tmp_path), emulate=True), progress=False)
    (unit,) = m.units.values()
    assert unit.precompile is None and unit.compiles == 3


def test_workers_share_the_configs_evenly(tmp_path):
    # 3 NB keys of 3 configs, 2 workers: dealt round-robin over all 9 (5 and 4), not 2+1 per key (6 and 3)
    import os
    from autotune_cache import precompile
    from autotune_cache.models import preset
    unit = {"target": "toy_target", "shape": preset("qwen3.5-9b").per_rank(1).model_dump(),
            "dtypes": {"act": "bfloat16"}, "tokens": [3000, 2000, 1000, 3000]}
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    counts = []
    for wid in (0, 1):
        code = ("import json, sys, triton\n"
                "from autotune_cache import precompile\n"
                "n = [0]\n"
                "triton.knobs.compilation.listener = lambda **kw: n.__setitem__(0, n[0] + (not kw.get('cache_hit')))\n"
                "try:\n"
                "    precompile._worker(*json.loads(sys.argv[1]))\n"
                "finally:\n"
                "    print('compiled', n[0])\n")
        proc = subprocess.run([sys.executable, "-c", code, json.dumps([str(tmp_path / f"w{wid}"), [unit], True, wid, 2])],
                              input="go\n", capture_output=True, text=True, timeout=300, env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr[-2000:]
        counts.append(int(proc.stdout.split("compiled")[-1]))
    assert sorted(counts) == [4, 5]
