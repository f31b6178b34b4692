"""Pure parts of a sharded build: the split of keys over GPUs (shard.py) and which GPUs are visible (gpus.py)."""
import pytest
from helpers import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune_cache import BuildSpec, shapes
from autotune_cache.builder.gpus import for_build, visible
from autotune_cache.builder.plan import plan
from autotune_cache.builder.shard import plan_parts, unit_configs
from autotune_cache.builder.spec import ModelUnit, PlannedKey
from autotune_cache.errors import SpecError
from autotune_cache.shapes import RankShape

SHAPE = RankShape(tp=1, H=16, HV=32, K=128, V=128, dtype="bfloat16", state_dtype="float32")


def unit(name, **keys):
    """A unit reaching the named keys (name -> configs); the same name in two units is the same key."""
    return ModelUnit(id=name, target="t", shape=SHAPE, tp=(1,), dtypes={"act": "bfloat16"}, tokens=(64,),
                keys=tuple(PlannedKey(kernel=k, fields={}, key=(k,), configs=c, tokens=64) for k, c in keys.items()))


def owned(sp):
    """key -> the shards whose parts own it (one each, if the plan is right)."""
    out = {}
    for parts in sp.shards:
        for part in parts:
            for k in part.owns:
                out.setdefault(k, set()).add(part.shard)
    return out


def check(units, sp):
    """What every shard plan must hold, whatever the units and shard count."""
    keys = {(k.kernel, tuple(k.key)) for u in units for k in u.keys}
    assert set(sp.owner) == keys and all(owned(sp)[k] == {s} for k, s in sp.owner.items())   # one owner per key
    assert all(parts for parts in sp.shards) and [p.shard for parts in sp.shards for p in parts] == [
        s for s, parts in enumerate(sp.shards) for _ in parts]
    tuned = [k for parts in sp.shards for p in parts for k in p.tunes]
    assert sorted(tuned, key=str) == sorted(keys, key=str)   # each key tuned in exactly one part
    order = {u.id: i for i, u in enumerate(units)}
    for parts in sp.shards:
        assert [order[p.id] for p in parts] == sorted(order[p.id] for p in parts)   # plan order
        for p in parts:
            assert p.tokens == p.unit.tokens[len(p.unit.tokens) - len(p.tokens):]   # a tail, largest first
            for k in p.unit.keys:   # an owned key is reached by the part's calls
                if (k.kernel, tuple(k.key)) in p.owns:
                    assert k.tokens in p.tokens
            home = next(u for u in units if set(p.tunes) <= {(k.kernel, tuple(k.key)) for k in u.keys})
            assert not p.tunes or home.id == p.id   # tuned in the first unit that reaches it
    for u in units:   # every key of a unit is reported by one of its parts
        parts = [p for s in sp.shards for p in s if p.id == u.id]
        assert sorted((k for p in parts for k in p.owns), key=str) == sorted(
            {(k.kernel, tuple(k.key)) for k in u.keys}, key=str)
    return sp


def test_keys_are_balanced_largest_first(monkeypatch):
    monkeypatch.setattr("autotune_cache.builder.shard.KEY_COST", 0)
    units = [unit("u", a=25, b=12, c=9, d=6)]
    sp = check(units, plan_parts(units, 2))
    assert sp.loads() == [25, 27] and sp.owner == {("a", ("a",)): 0, ("b", ("b",)): 1, ("c", ("c",)): 1,
                                                    ("d", ("d",)): 1}
    # one unit on both shards, each reporting its own keys
    assert [[(p.id, p.owns) for p in s] for s in sp.shards] == [[("u", (("a", ("a",)),))],
                                                                [("u", (("b", ("b",)), ("c", ("c",)), ("d", ("d",))))]]


def test_one_shard_drives_every_unit_whole_and_owns_every_key():
    units = [unit("A", x=25, a=10), unit("B", x=25, b=10), unit("C", c=3)]
    sp = check(units, plan_parts(units, 1))
    assert [(p.id, p.tokens, len(p.owns)) for p in sp.shards[0]] == [("A", (64,), 2), ("B", (64,), 2), ("C", (64,), 1)]
    assert sp.foreign(0) == frozenset()
    assert sp.shards[0][1].tunes == {("b", ("b",))}   # x is tuned in A, a disk hit in B


def test_a_key_shared_by_units_is_tuned_once_by_its_owner():
    # x is reached by A and B (like l2norm's keys between TP degrees): its owner tunes it in A and finds it on disk
    # in B; the other shard launches it untuned
    units = [unit("A", x=25, a=10), unit("B", x=25, b=10)]
    sp = check(units, plan_parts(units, 2))
    x = ("x", ("x",))
    s = sp.owner[x]
    assert [(p.id, x in p.tunes) for p in sp.shards[s] if x in p.owns] == [("A", True), ("B", False)]
    assert x in sp.foreign(1 - s) and x not in sp.foreign(s)
    assert sum(sp.loads()) == 45   # 25 + 10 + 10: x counted once


def test_a_part_drives_the_unit_from_its_first_owned_key_down():
    shape_unit = ModelUnit(id="u", target="t", shape=SHAPE, tp=(1,), dtypes={"act": "bfloat16"},
                           tokens=(4096, 2048, 1024),
                           keys=(PlannedKey(kernel="big", fields={}, key=(1,), configs=30, tokens=4096),
                                 PlannedKey(kernel="nb", fields={}, key=(2,), configs=20, tokens=2048),
                                 PlannedKey(kernel="nb", fields={}, key=(1,), configs=20, tokens=1024)))
    sp = check([shape_unit], plan_parts([shape_unit], 2))
    assert sorted((p.tokens, p.owns) for s in sp.shards for p in s) == [
        ((2048, 1024), (("nb", (2,)), ("nb", (1,)))), ((4096, 2048, 1024), (("big", (1,)),))]


def test_never_more_shards_than_keys():
    units = [unit("a", a=3), unit("b", b=1)]
    assert len(check(units, plan_parts(units, 8)).shards) == 2
    assert len(plan_parts(units, 1).shards) == 1
    assert plan_parts([], 4).shards == ()
    with pytest.raises(ValueError):
        plan_parts(units, 0)


def test_a_unit_without_keys_is_driven_whole_by_one_shard():
    units = [unit("a", a=3, b=3), unit("empty")]
    sp = check(units, plan_parts(units, 2))
    assert [(p.id, p.tokens, p.owns) for s in sp.shards for p in s if p.id == "empty"] == [("empty", (64,), ())]


def test_unknown_config_counts_count_zero():
    u = unit("a", a=None, b=4)
    assert unit_configs(u) == 4


@settings(max_examples=examples(150), deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from([None, 1, 3, 12, 25]), min_size=1),
                min_size=1, max_size=6),
       st.integers(1, 9))
def test_any_plan_any_shard_count(key_sets, n):
    units = [unit(f"u{i}", **keys) for i, keys in enumerate(key_sets)]
    sp = check(units, plan_parts(units, n))
    assert len(sp.shards) == min(n, len({k for keys in key_sets for k in keys}))


def test_fla_plan_over_gpus():
    # qwen3.5-9b at TP 1, 2, 4, 8 on upstream FLA: 24 keys, 236 configs; no shard benchmarks more than the even
    # share of the configs plus one key (the greedy bound), 4 GPUs exactly even
    p = plan(BuildSpec(model=shapes.preset("qwen3.5-9b"), tp=(1, 2, 4, 8)))
    biggest = max(k.configs for u in p.units for k in u.keys)
    for n in (1, 2, 3, 4, 8):
        sp = check(p.units, plan_parts(p.units, n))
        assert len(sp.shards) == n and sum(sp.loads()) == 236
        assert max(sp.loads()) <= 236 / n + biggest
    assert plan_parts(p.units, 2).loads() == [118, 118] and plan_parts(p.units, 4).loads() == [59] * 4


# -- which GPUs ----------------------------------------------------------------------------------------------
SMI = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaa)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbb)\n"


def test_visible_reads_cuda_visible_devices_then_nvidia_smi():
    assert visible({"CUDA_VISIBLE_DEVICES": "2,3"}, smi=lambda: SMI).ids == ("2", "3")
    assert visible({"CUDA_VISIBLE_DEVICES": "GPU-bbb"}, smi=lambda: SMI).ids == ("GPU-bbb",)
    assert visible({"CUDA_VISIBLE_DEVICES": ""}, smi=lambda: SMI).ids == ()
    assert visible({}, smi=lambda: SMI).ids == ("0", "1")
    assert visible({}, smi=lambda: None).ids == ("0",)   # nothing to ask: one assumed


def test_gpus_for_a_build():
    two = {"CUDA_VISIBLE_DEVICES": "4,6"}
    assert for_build(None, False, two) == ("4", "6")       # every visible one, their physical names passed on
    assert for_build(1, False, two) == (None,)             # one child, unpinned: the build as before sharding
    assert for_build(None, False, {}, smi=lambda: SMI) == ("0", "1")
    assert for_build(None, False, {"CUDA_VISIBLE_DEVICES": ""}) == (None,)   # the child reports no GPU
    with pytest.raises(SpecError, match=r"--gpus 3: .* 2 visible \(CUDA_VISIBLE_DEVICES=4,6\)"):
        for_build(3, False, two)
    with pytest.raises(SpecError, match="none visible"):
        for_build(2, False, {"CUDA_VISIBLE_DEVICES": ""})
    # emulated: one child unless asked; any number of fake GPUs
    assert for_build(None, True, two) == (None,)
    assert for_build(2, True, two) == ("4", "6")
    assert for_build(3, True, two) == ("0", "1", "2")


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_spec_rejects_bad_gpu_counts(bad):
    with pytest.raises(SpecError, match="--gpus must be a positive integer"):
        BuildSpec(model=shapes.preset("qwen3.5-9b"), gpus=bad)


# -- the CLI: --gpus is checked before anything is written -----------------------------------------------------
@pytest.mark.parametrize("args,env,msg", [
    (["--gpus", "0", "--emulate"], {}, "--gpus must be a positive integer, got 0"),
    (["--gpus", "3"], {"CUDA_VISIBLE_DEVICES": "0,1"}, "--gpus 3: more GPUs than this host shows, 2 visible "
                                                        "(CUDA_VISIBLE_DEVICES=0,1)"),
    (["--gpus", "2"], {"CUDA_VISIBLE_DEVICES": ""}, "none visible"),
], ids=["zero", "too-many", "none"])
def test_cli_bad_gpus_exits_2_with_one_line_and_writes_nothing(tmp_path, args, env, msg):
    from helpers import run_cli
    cache = tmp_path / "c"
    proc = run_cli("build", "--target", "toy_target", "--cache-dir", cache, "--no-progress", *args, env=env)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert msg in line, line
    assert not cache.exists()


def test_children_on_gpus_that_make_other_disk_keys_stop_the_build(tmp_path):
    # an H100 and an A100 in one host: another backend hash (compute capability), so other disk keys
    from autotune_cache.builder.orchestrator import Build
    from autotune_cache.cache.fingerprint import Fingerprint
    from autotune_cache.cache.manifest import Manifest
    from autotune_cache.errors import CacheDirError

    b = Build(plan(BuildSpec(model=shapes.preset("qwen3.5-9b"), targets=("toy_target",), emulate=True, gpus=2)),
              tmp_path, progress=False)
    assert b.devices == ("0", "1")
    b.ledger.manifest = Manifest(tool_version="0")
    h100 = Fingerprint(python="3.11.7", triton="3.6.0", torch="2.13.0", cuda="13.0", packages={},
                       gpu_name="NVIDIA H100 80GB HBM3", capability="9.0", ptxas="12.8", backend_hash="sm90",
                       triton_key_sha256="k", env={})
    a100 = h100.model_copy(update={"backend_hash": "sm80", "capability": "8.0", "gpu_name": "NVIDIA A100"})
    assert b.ledger.on_hello(h100, "0") and b.ledger.on_hello(h100, "1")
    with pytest.raises(CacheDirError, match=r"GPU 1 makes other disk keys than GPU 0 .*--gpus 1"):
        b.ledger.on_hello(a100, "1")


def test_cores_are_shared_out_between_the_children(monkeypatch):
    from autotune_cache.builder.orchestrator import Build
    monkeypatch.delenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))   # the cores this process may use
    # each child benchmarks on one of its share
    assert [Build.compile_processes(n, False) for n in (1, 2, 4, 32)] == [15, 7, 3, 1]
    assert Build.compile_processes(2, True) is None   # emulated: threads, as before
    monkeypatch.setenv("AUTOTUNE_CACHE_COMPILE_PROCESSES", "3")
    assert Build.compile_processes(2, False) is None   # the child reads the env var itself


def test_replay_units_without_keys_or_token_counts_spread_over_the_shards():
    # build --from-record: one unit per recorded kernel, its keys known only when it runs (builder/replay_unit.py)
    replays = [ModelUnit(id=f"replay/{i}", target="t", shape=SHAPE, tp=(1,), dtypes={}, tokens=()) for i in range(3)]
    sp = plan_parts(replays, 2)
    assert [[p.id for p in parts] for parts in sp.shards] == [["replay/0", "replay/2"], ["replay/1"]]
    assert all(p.tokens == () and p.owns == () for parts in sp.shards for p in parts)
    assert [[p.id for p in parts] for parts in plan_parts(replays[:1], 4).shards] == [["replay/0"]]
