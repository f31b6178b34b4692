"""A build sharded over two and four (emulated) GPUs, end to end on the CPU: real children, real Triton compiles
for a fake sm_90 GPU, one merged manifest, the same as a one-GPU build's.

The plan: qwen3.5-9b at TP 1, 2 and 4 on toy_shard_target, up to 2048 tokens: 3 units (H 16, 8, 4), each tuning
its own toy_heads_kernel keys (NB 2 at 2048 tokens, NB 1 at 1024) and all reaching the one toy_shared_kernel key
(tuned in unit 0). shard.plan_parts gives each of the 7 keys one owner; on two GPUs, GPU 0 drives all three units
and GPU 1 units 0 and 1, each tuning only its own keys.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import test_faults
from helpers import run_cli, stand_in
from test_faults import TAG, assert_entries_intact, build_children, no_temp_files, tagged_pids, wait_until

from autotune_cache import BuildSpec, build, shapes
from autotune_cache.builder.orchestrator import Build, prepare_cache_dir
from autotune_cache.builder.plan import plan
from autotune_cache.builder.selection import Settings as SelectionSettings
from autotune_cache.builder.shard import plan_parts
from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.cache.files import sha256_file
from autotune_cache.cache.layout import read_autotune
from autotune_cache.cache.scan import scan
from autotune_cache.cache.verify import changed_files, verify

tag = test_faults.tag   # the fixture, usable here under its name (an import of it reads as unused to pyflakes)


def spec(cache_dir, **kw):
    kw = {"tp": (1, 2, 4), "targets": ("toy_shard_target",), "max_tokens": 2048, "unit_timeout_s": 120.0, **kw}
    return BuildSpec(model=shapes.preset("qwen3.5-9b"), cache_dir=str(cache_dir), emulate=True, **kw)


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def sharded_build(cache, monkeypatch, record, **kw):
    monkeypatch.setenv("AUTOTUNE_CACHE_TEST_RECORD", str(record))
    return build(spec(cache, gpus=2, **kw), progress=False)


GPUS = (1, 2, 4)
B32, B64, B128 = (f"BLOCK: {b}, num_warps: {w}, num_ctas: 1, num_stages: 3, maxnreg: None"
                  for b, w in ((32, 1), (64, 2), (128, 4)))
# Fake timings fixed per config and call size n = tokens x heads (emulation.FAKE_TIMES_ENV; constexprs are not
# among the arguments it sees): the winners then depend on the calls each key is tuned and probed at, and a key
# tuned in another unit or at another token count than in a one-GPU build would come out otherwise.
TIMES = {B32: [0.6], B64: [0.7], B128: [0.8], f"{B64} @ n=32768": [0.25], f"{B128} @ n=8192": [0.2]}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """gpus -> (manifest, calls recorded by the children, times each key was benchmarked) of the same plan built
    into root/g<gpus> with 1, 2 and 4 GPUs; and root."""
    root = tmp_path_factory.mktemp("shard")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTUNE_CACHE_FAKE_TIMES", json.dumps(TIMES))   # the build children inherit it
        for g in GPUS:
            mp.setenv("AUTOTUNE_CACHE_TEST_RECORD", str(root / f"calls-{g}.jsonl"))
            s = spec(root / f"g{g}", gpus=g)
            b = Build(plan(s), prepare_cache_dir(s.cache_dir), progress=False)
            out[g] = (b.run(), records(root / f"calls-{g}.jsonl"), dict(b.ledger.tuned))
    return root, out


@pytest.fixture(scope="module")
def built(builds):
    """(cache dir, manifest, calls) of the gpus=2 build, and (manifest, calls) of the gpus=1 build."""
    root, out = builds
    return root / "g2", out[2][0], out[2][1], out[1][0], out[1][1]


def test_the_plan_gives_each_key_one_owner():
    p = plan(spec("x"))
    sp = plan_parts(p.units, 2)
    assert len(sp.owner) == 7 and sorted(sp.loads()) == [9, 12]
    assert [[p.units.index(part.unit) for part in s] for s in sp.shards] == [[0, 1, 2], [0, 1]]


def test_children_one_per_gpu_each_with_its_own_cuda_visible_devices(builds):
    root, out = builds
    for g in GPUS:
        m, calls, _ = out[g]
        assert {u.status for u in m.units.values()} == {"done"}
        by_pid = {}
        for call in calls:
            by_pid.setdefault(call["pid"], set()).add(call["gpu"])
        if g == 1:   # one child, not pinned to a GPU
            assert len(by_pid) == 1 and {u.gpu for u in m.units.values()} == {None}
            continue
        assert len(by_pid) == g and sorted(gpu for gs in by_pid.values() for gpu in gs) == list(map(str, range(g)))
        # the manifest names the GPUs that drove each unit, as the children saw them
        for u in plan(spec("x")).units:
            drove = sorted({c["gpu"] for c in calls if c["H"] == u.shape.H})
            assert sorted(m.units[u.id].gpu.split(",")) == drove


def test_the_cache_is_the_same_whatever_the_gpu_count_and_each_key_is_tuned_once(builds):
    root, out = builds

    def shape(m):
        return ({name: (e.kernel, e.key, e.configs, e.tokens, sorted(e.units), e.winner["kwargs"])
                 for name, e in m.entries.items()},
                {uid: (u.status, sorted(u.entries), u.hits) for uid, u in m.units.items()}, sorted(m.files))

    one = shape(out[1][0])
    assert len({w["BLOCK"] for *_, w in one[0].values()}) > 1   # the timings chose: not every winner alike
    for g in GPUS:
        m, _, tuned = out[g]
        assert shape(m) == one, g   # entries, tuned at the same token counts; unit coverage; every file
        assert len(m.entries) == 7 and len(tuned) == 7 and set(tuned.values()) == {1}, (g, tuned)
        assert {(e.kernel, tuple(e.key)) for e in m.entries.values()} == set(tuned)
        assert_entries_intact(root / f"g{g}", m)
        no_temp_files(root / f"g{g}")


def test_a_sharded_unit_is_driven_only_where_a_shard_owns_one_of_its_keys(builds):
    # 4 GPUs, 7 keys: the shared key's owner drives every unit (finding it on disk in units 1 and 2); each other
    # child drives only the units of its own keys, from the token count that first reaches them
    _, out = builds
    m, calls, _ = out[4]
    p = plan(spec("x"))
    sp = plan_parts(p.units, 4)
    for s, parts in enumerate(sp.shards):
        driven = sorted({(c["H"], c["tokens"]) for c in calls if c["gpu"] == str(s)})
        assert driven == sorted({(part.unit.shape.H, t) for part in parts for t in part.tokens}
                                | {(part.unit.shape.H, 512) for part in parts if 512 < max(part.unit.tokens)}), s


def test_merged_manifest_equals_a_one_gpu_build(built):
    root, two, _, one, _ = built

    def shape(m):
        return ({name: (e.kernel, e.key, e.configs, sorted(e.units)) for name, e in m.entries.items()},
                {uid: (u.status, sorted(u.entries)) for uid, u in m.units.items()}, sorted(m.files))

    assert shape(two) == shape(one)
    assert len(two.entries) == 7   # the shared key + 2 NB keys per unit
    assert manifest_mod.load(root) == two
    for name, entry in two.entries.items():
        parsed = read_autotune(root / name)
        assert (parsed.winner, parsed.best, parsed.margin) == (entry.winner, entry.best, entry.margin)
        assert entry.binaries


def test_verify_passes_on_the_merged_cache_and_a_fresh_process_hits_every_key(built):
    root, _, _, _, _ = built
    v = verify(scan(root), plan(spec("x")))
    assert v.ok, [c for c in v.checks if not c.ok]
    assert "coverage" in {c.name for c in v.checks}
    run_cli("verify", root, "--model", "qwen3.5-9b", "--tp", "1,2,4", "--target", "toy_shard_target",
            "--max-tokens", "2048", check=0)
    report = stand_in(root, "--model", "qwen3.5-9b", "--tp", "4", "--target", "toy_shard_target",
                   "--tokens", "1024,2048", "--emulate")
    assert report["lookups"] == report["hits"] == 3 and report["benchmarks"] == 0


def test_rebuild_of_a_sharded_cache_does_nothing(built, tmp_path):
    root, two, _, _, _ = built
    cache = shutil.copytree(root, tmp_path / "c")   # the module's cache stays as built
    again = build(spec(cache, gpus=2), progress=False)
    assert [u.attempts for u in again.units.values()] == [1, 1, 1] and again.entries == two.entries


def test_a_fault_in_one_shard_is_retried_and_the_other_shard_finishes(tmp_path, monkeypatch, tag):
    # unit 2 (driven by GPU 0 alone) raises on its first attempt: shard 0 did units 0 and 1 first, its retry child
    # does unit 2 only
    monkeypatch.setenv("AUTOTUNE_CACHE_FAULT", "2:raise")
    m = sharded_build(tmp_path / "c", monkeypatch, tmp_path / "calls.jsonl")
    u0, u1, u2 = m.units.values()
    assert {u.status for u in (u0, u1, u2)} == {"done"}
    assert (u0.attempts, u1.attempts, u2.attempts) == (1, 1, 2)
    assert u2.failures == ["attempt 1: RuntimeError: injected fault in unit 2"] and not u0.failures + u1.failures
    assert len({c["pid"] for c in records(tmp_path / "calls.jsonl")}) == 3   # two children, then a fresh one
    assert_entries_intact(tmp_path / "c", m)
    no_temp_files(tmp_path / "c")


def test_a_hang_in_a_unit_split_over_both_shards_retries_each_part(tmp_path, monkeypatch, tag):
    # unit 1 has a part on each GPU: both hang on their first attempt, each is killed at the timeout and retried
    # by a fresh child of its shard (attempts count per part: 2, not 3)
    monkeypatch.setenv("AUTOTUNE_CACHE_FAULT", "1:hang")
    m = sharded_build(tmp_path / "c", monkeypatch, tmp_path / "calls.jsonl", unit_timeout_s=10)
    u0, u1, u2 = m.units.values()
    assert {u.status for u in (u0, u1, u2)} == {"done"}
    assert (u0.attempts, u1.attempts, u2.attempts) == (1, 2, 1)
    assert u1.failures == ["attempt 1: timed out after 10 s"] * 2 and sorted(u1.gpu.split(",")) == ["0", "1"]
    assert len({c["pid"] for c in records(tmp_path / "calls.jsonl")}) == 4   # two children, two retries
    assert len(m.entries) == 7
    assert not tagged_pids(tag)   # the hung child is gone, not orphaned
    assert_entries_intact(tmp_path / "c", m)
    no_temp_files(tmp_path / "c")


def test_the_key_every_unit_reaches_is_tuned_once_while_both_gpus_benchmark_at_once(tmp_path, monkeypatch):
    # Both children wait for each other at their first benchmark, then tune at once (the key sets of PR 1's
    # last-writer-wins case). Only the shared key's owner tunes it, in unit 0; its other units find it on disk.
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("AUTOTUNE_CACHE_TEST_BARRIER", f"{barrier}:2")
    m = sharded_build(tmp_path / "c", monkeypatch, tmp_path / "calls.jsonl",
                      selection=SelectionSettings(probe_tokens=()))
    assert len(list(barrier.iterdir())) == 2
    p = plan(spec("x"))
    (shared,) = [e for e in m.entries.values() if e.kernel == "toy_shared_kernel"]
    assert shared.tokens == 2048 and sorted(shared.units) == sorted(u.id for u in p.units)
    assert [m.units[u.id].hits for u in p.units] == [0, 1, 1]
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
    children = build_children(tag, cli.pid)
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
    # both children were in their part of unit 0 (each owns keys of it)
    assert [(u.status, u.attempts, u.error) for u in m.units.values()] == [
        ("pending", 1, "interrupted"), ("pending", 0, "interrupted"), ("pending", 0, "interrupted")]
    no_temp_files(cache)
    # the same build again, without the barrier: everything runs, on both GPUs
    proc = run_cli(*base, "--retries", "0", check=0)
    assert "Traceback" not in proc.stderr
    assert {(u.status, u.attempts) for u in manifest_mod.load(cache).units.values()} == {("done", 1)}


RECONCILE = """
import json, sys
from pathlib import Path
from autotune_cache import BuildSpec, shapes
from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.builder.orchestrator import Build
from autotune_cache.builder.plan import plan

cache, name = Path(sys.argv[1]), sys.argv[2]
spec = BuildSpec(model=shapes.preset("qwen3.5-9b"), tp=(1, 2, 4), targets=("toy_shard_target",), max_tokens=2048,
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
    cache = shutil.copytree(root, tmp_path / "c")
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
    assert {g for u in manifest_mod.load(cache).units.values() for g in u.gpu.split(",")} == {"0", "1"}
    assert "--gpus must be a positive integer" in run_cli(*args, "--gpus", "0", check=2).stderr
