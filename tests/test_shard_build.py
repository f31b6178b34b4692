"""A build sharded over two (emulated) GPUs, end to end on the CPU: real children, real Triton compiles for a fake
sm_90 GPU, one merged manifest.

The plan: qwen3.5-9b at TP 1, 2 and 4 on toy_shard_target, up to 2048 tokens: 3 units (H 16, 8, 4), each tuning
its own toy_heads_kernel keys (NB 1 and 2) and all reaching the one toy_shared_kernel key. shard.plan_shards puts
units 0 and 2 on one GPU, unit 1 on the other.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from autotune_cache import BuildSpec, build, models
from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.builder.plan import plan
from autotune_cache.cache.scan import scan
from autotune_cache.builder.shard import plan_shards
from autotune_cache.builder.selection import Settings as SelectionSettings
from autotune_cache.cache.layout import read_autotune
from autotune_cache.cache.files import sha256_file
from autotune_cache.cache.verify import changed_files, verify
import test_faults
from helpers import stand_in, run_cli
from test_faults import TAG, assert_entries_intact, no_temp_files, tagged_pids, wait_until

tag = test_faults.tag   # the fixture, usable here under its name (an import of it reads as unused to pyflakes)


def spec(cache_dir, **kw):
    kw = {"tp": (1, 2, 4), "targets": ("toy_shard_target",), "max_tokens": 2048, "unit_timeout_s": 120.0, **kw}
    return BuildSpec(model=models.preset("qwen3.5-9b"), cache_dir=str(cache_dir), emulate=True, **kw)


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def sharded_build(cache, monkeypatch, record, **kw):
    monkeypatch.setenv("AUTOTUNE_CACHE_TEST_RECORD", str(record))
    return build(spec(cache, gpus=2, **kw), progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(cache dir, manifest, calls recorded by the children) of a gpus=2 build; the gpus=1 build of the same plan."""
    root = tmp_path_factory.mktemp("shard")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTUNE_CACHE_TEST_RECORD", str(root / "calls-2.jsonl"))
        two = build(spec(root / "two", gpus=2), progress=False)
        mp.setenv("AUTOTUNE_CACHE_TEST_RECORD", str(root / "calls-1.jsonl"))
        one = build(spec(root / "one", gpus=1), progress=False)
    return root, two, records(root / "calls-2.jsonl"), one, records(root / "calls-1.jsonl")


def test_the_plan_splits_over_two_shards():
    p = plan(spec("x"))
    assert [[p.units.index(u) for u in s] for s in plan_shards(p.units, 2)] == [[0, 2], [1]]


def test_two_children_one_per_gpu_each_with_its_own_cuda_visible_devices(built):
    root, two, calls, one, calls_one = built
    assert {u.status for u in two.units.values()} == {"done"}
    by_pid = {}
    for call in calls:
        by_pid.setdefault(call["pid"], set()).add(call["gpu"])
    assert len(by_pid) == 2 and sorted(g for gs in by_pid.values() for g in gs) == ["0", "1"]
    # the manifest says which GPU ran each unit, as the child saw it
    p = plan(spec("x"))
    gpu_of_heads = {c["H"]: c["gpu"] for c in calls}
    for u in p.units:
        assert two.units[u.id].gpu == gpu_of_heads[u.shape.H]
    assert two.units[p.units[0].id].gpu == two.units[p.units[2].id].gpu != two.units[p.units[1].id].gpu
    # the one-GPU build: one child, not pinned to a GPU
    assert len({c["pid"] for c in calls_one}) == 1 and {u.gpu for u in one.units.values()} == {None}


def test_merged_manifest_equals_a_one_gpu_build(built):
    root, two, _, one, _ = built

    def shape(m):
        return ({name: (e.kernel, e.key, e.configs, sorted(e.units)) for name, e in m.entries.items()},
                {uid: (u.status, sorted(u.entries)) for uid, u in m.units.items()}, sorted(m.files))

    assert shape(two) == shape(one)
    assert len(two.entries) == 7   # the shared key + 2 NB keys per unit
    assert manifest_mod.load(root / "two") == two
    assert_entries_intact(root / "two", two)
    no_temp_files(root / "two")
    for name, entry in two.entries.items():
        parsed = read_autotune(root / "two" / name)
        assert (parsed.winner, parsed.best, parsed.margin) == (entry.winner, entry.best, entry.margin)
        assert entry.binaries


def test_verify_passes_on_the_merged_cache_and_a_fresh_process_hits_every_key(built):
    root, _, _, _, _ = built
    v = verify(scan(root / "two"), plan(spec("x")))
    assert v.ok, [c for c in v.checks if not c.ok]
    assert "coverage" in {c.name for c in v.checks}
    run_cli("verify", root / "two", "--model", "qwen3.5-9b", "--tp", "1,2,4", "--target", "toy_shard_target",
            "--max-tokens", "2048", check=0)
    report = stand_in(root / "two", "--model", "qwen3.5-9b", "--tp", "4", "--target", "toy_shard_target",
                   "--tokens", "1024,2048", "--emulate")
    assert report["lookups"] == report["hits"] == 3 and report["benchmarks"] == 0


def test_rebuild_of_a_sharded_cache_does_nothing(built, tmp_path):
    root, two, _, _, _ = built
    cache = shutil.copytree(root / "two", tmp_path / "c")   # the module's cache stays as built
    again = build(spec(cache, gpus=2), progress=False)
    assert [u.attempts for u in again.units.values()] == [1, 1, 1] and again.entries == two.entries


def test_a_fault_in_one_shard_is_retried_and_the_other_shard_finishes(tmp_path, monkeypatch, tag):
    # unit 2 raises on its first attempt: shard 0 did unit 0 first, its retry child does unit 2 only
    monkeypatch.setenv("AUTOTUNE_CACHE_FAULT", "2:raise")
    m = sharded_build(tmp_path / "c", monkeypatch, tmp_path / "calls.jsonl")
    u0, u1, u2 = m.units.values()
    assert {u.status for u in (u0, u1, u2)} == {"done"}
    assert (u0.attempts, u1.attempts, u2.attempts) == (1, 1, 2)
    assert u2.failures == ["attempt 1: RuntimeError: injected fault in unit 2"] and not u0.failures + u1.failures
    assert len({c["pid"] for c in records(tmp_path / "calls.jsonl")}) == 3   # two children, then a fresh one
    assert_entries_intact(tmp_path / "c", m)
    no_temp_files(tmp_path / "c")


def test_a_hang_in_one_shard_is_killed_at_the_timeout_and_the_other_shard_finishes(tmp_path, monkeypatch, tag):
    # unit 1 (the other GPU's only unit) hangs on its first attempt
    monkeypatch.setenv("AUTOTUNE_CACHE_FAULT", "1:hang")
    m = sharded_build(tmp_path / "c", monkeypatch, tmp_path / "calls.jsonl", unit_timeout_s=10)
    u0, u1, u2 = m.units.values()
    assert {u.status for u in (u0, u1, u2)} == {"done"}
    assert (u0.attempts, u1.attempts, u2.attempts) == (1, 2, 1)
    assert u1.failures == ["attempt 1: timed out after 10 s"]
    assert not tagged_pids(tag)   # the hung child is gone, not orphaned
    assert_entries_intact(tmp_path / "c", m)
    no_temp_files(tmp_path / "c")


def test_a_key_two_gpus_tune_at_once_is_recorded_as_the_file_written_last(tmp_path, monkeypatch):
    # Both first units wait for each other before the shared kernel, then tune it at once with other fake timings:
    # two writes of one file, last writer wins. Whichever child reports last, the manifest must describe the file.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("AUTOTUNE_CACHE_TEST_BARRIER", f"{barrier}:2")
    # no probe pass: the barrier is at each child's first benchmark, which must be the shared key's tuning
    m = sharded_build(tmp_path / "c", monkeypatch, tmp_path / "calls.jsonl",
                      selection=SelectionSettings(probe_tokens=()))
    assert len(list(barrier.iterdir())) == 2
    p = plan(spec("x"))
    (shared,) = [e for e in m.entries.values() if e.kernel == "toy_shared_kernel"]
    assert m.units[p.units[0].id].hits == m.units[p.units[1].id].hits == 0   # both tuned the shared key
    assert sorted(shared.units) == sorted(u.id for u in p.units)
    parsed = read_autotune(tmp_path / "c" / shared.file)
    assert sha256_file(tmp_path / "c" / shared.file) == shared.sha256
    assert (parsed.winner, parsed.best, parsed.margin) == (shared.winner, shared.best, shared.margin)
    assert_entries_intact(tmp_path / "c", m)
    assert verify(scan(tmp_path / "c"), p).ok


def test_sigint_kills_every_child_and_saves_the_units_as_pending(tmp_path, tag):
    # Both children are held in their first benchmark (a barrier for 3 that only 2 reach) when Ctrl-C comes.
    barrier, cache = tmp_path / "barrier", tmp_path / "c"
    barrier.mkdir()
    base = ("build", "--target", "toy_shard_target", "--tp", "1,2,4", "--max-tokens", "2048", "--cache-dir", cache,
            "--emulate", "--gpus", "2", "--no-progress")
    env = {**os.environ, TAG: tag, "AUTOTUNE_CACHE_TEST_BARRIER": f"{barrier}:3"}
    cli = subprocess.Popen([sys.executable, "-m", "autotune_cache", *map(str, base), "--timeout", "600"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: len(list(barrier.iterdir())) == 2, 120, "both children in their first unit")
    except BaseException:
        cli.kill()
        raise
    children = [p for p in tagged_pids(tag) if p != cli.pid]
    assert len(children) == 2
    cli.send_signal(signal.SIGINT)
    _, stderr = cli.communicate(timeout=60)
    assert cli.returncode == 130, stderr
    assert "interrupted; finished units are kept" in stderr and "Traceback" not in stderr
    for child in children:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
    assert not tagged_pids(tag)
    m = manifest_mod.load(cache)
    assert [(u.status, u.attempts, u.error) for u in m.units.values()] == [
        ("pending", 1, "interrupted"), ("pending", 1, "interrupted"), ("pending", 0, "interrupted")]
    no_temp_files(cache)
    # the same build again, without the barrier: everything runs, on both GPUs
    proc = run_cli(*base, "--retries", "0", check=0)
    assert "Traceback" not in proc.stderr
    assert {(u.status, u.attempts) for u in manifest_mod.load(cache).units.values()} == {("done", 1)}


RECONCILE = """
import json, sys
from pathlib import Path
from autotune_cache import BuildSpec, models
from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.builder.orchestrator import Build
from autotune_cache.builder.plan import plan

cache, name = Path(sys.argv[1]), sys.argv[2]
spec = BuildSpec(model=models.preset("qwen3.5-9b"), tp=(1, 2, 4), targets=("toy_shard_target",), max_tokens=2048,
                 cache_dir=str(cache), emulate=True, gpus=2)
ledger = Build(plan(spec), cache, progress=False).ledger
ledger.manifest = manifest_mod.load(cache)
ledger.sharded, ledger.reported = True, set(ledger.manifest.entries)
ledger.save()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("triton", "torch"))
print(json.dumps({"reconciled": sorted(ledger.reconciled), "imported": heavy}))
"""


def test_reconcile_records_the_last_writers_file_and_keeps_both_binaries(built, tmp_path):
    # As if the other GPU wrote the shared key's file after this one reported it: other timings, another winner.
    root, two, _, _, _ = built
    cache = shutil.copytree(root / "two", tmp_path / "c")
    (name,) = [n for n, e in two.entries.items() if e.kernel == "toy_shared_kernel"]
    raw = json.loads((cache / name).read_text())
    raw["configs_timings"] = [[c, [10.0 + 5 * i] * 3] for i, (c, _) in enumerate(raw["configs_timings"])][::-1]
    (cache / name).write_text(json.dumps(raw))
    before = two.entries[name]
    proc = subprocess.run([sys.executable, "-c", RECONCILE, str(cache), name], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"reconciled": [name], "imported": []}   # plain JSON in the parent: no Triton, no torch
    m = manifest_mod.load(cache)
    entry = m.entries[name]
    assert entry.sha256 == sha256_file(cache / name) == m.files[name].sha256
    assert (entry.winner, entry.best, entry.margin) == (raw["configs_timings"][-1][0], 10.0, 0.5)
    assert entry.binaries == before.binaries and entry.units == before.units
    assert changed_files(scan(cache)) == {}   # (verify proper fails on a copy: its group files name the original)


def test_ensure_builds_over_the_gpus_it_is_given(tmp_path):
    cache = tmp_path / "c"
    args = ("ensure", "--target", "toy_shard_target", "--tp", "1,2,4", "--max-tokens", "2048", "--cache-dir", cache,
            "--emulate", "--no-progress", "--json")
    out = json.loads(run_cli(*args, "--gpus", "2", check=0).stdout)
    assert out["built"] and out["ok"]
    assert {u.gpu for u in manifest_mod.load(cache).units.values()} == {"0", "1"}
    assert "--gpus must be a positive integer" in run_cli(*args, "--gpus", "0", check=2).stderr
