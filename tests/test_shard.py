"""Pure parts of a sharded build: the split of units over GPUs (shard.py) and which GPUs are visible (gpus.py)."""
import pytest

from autotune_cache import BuildSpec, models
from autotune_cache.errors import SpecError
from autotune_cache.builder.gpus import for_build, visible
from autotune_cache.models import RankShape
from autotune_cache.builder.plan import plan
from autotune_cache.builder.shard import overlapping_groups, plan_shards, shared_keys, unit_configs
from autotune_cache.builder.spec import PlannedKey, Unit

SHAPE = RankShape(tp=1, H=16, HV=32, K=128, V=128, dtype="bfloat16", state_dtype="float32")


def unit(name, **keys):
    """A unit reaching the named keys (name -> configs); the same name in two units is the same key."""
    return Unit(id=name, target="t", shape=SHAPE, tp=(1,), dtypes={"act": "bfloat16"}, tokens=(64,),
                keys=tuple(PlannedKey(kernel=k, fields={}, key=(k,), configs=c, tokens=64) for k, c in keys.items()))


def ids(shards):
    return [[u.id for u in s] for s in shards]


def loads(shards):
    """Configs each shard benchmarks: every key it reaches, once."""
    out = []
    for s in shards:
        keys = {}
        for u in s:
            keys.update({k.key: k.configs for k in u.keys})
        out.append(sum(keys.values()))
    return out


def test_disjoint_units_are_balanced_largest_first():
    units = [unit(f"u{i}", **{f"k{i}": c}) for i, c in enumerate((10, 9, 8, 7, 6, 5))]
    shards = plan_shards(units, 2)
    assert sorted(loads(shards)) == [22, 23]
    assert sorted(u.id for s in shards for u in s) == sorted(u.id for u in units)   # each unit once
    # three shards: 10+5, 9+6, 8+7
    assert sorted(loads(plan_shards(units, 3))) == [15, 15, 15]


def test_each_shard_keeps_plan_order():
    units = [unit(f"u{i}", **{f"k{i}": c}) for i, c in enumerate((1, 5, 2, 6, 3, 7))]
    for shard in plan_shards(units, 2):
        assert [u.id for u in shard] == sorted(u.id for u in shard)


def test_units_sharing_keys_go_to_one_shard():
    # A and B share a 25-config key (like l2norm's between TP degrees), C and D another. Placed one by one,
    # balance alone would split both pairs ([A, C], [B, D]: 70 configs each, both shared keys tuned twice).
    units = [unit("A", x=25, a=10), unit("C", y=25, c=10), unit("B", x=25, b=10), unit("D", y=25, d=10)]
    shards = plan_shards(units, 2)
    assert ids(shards) == [["A", "B"], ["C", "D"]]
    assert loads(shards) == [45, 45] and shared_keys(shards) == {}


def test_a_group_too_big_for_one_shard_is_split_by_unit_and_overlap_still_counts():
    # Every unit shares key x (one group of 40 + 4 * 10 = 80 configs > 80 / 2): placed unit by unit, the shared key
    # tuned on both shards, the rest balanced.
    units = [unit(f"u{i}", x=40, **{f"own{i}": 10}) for i in range(4)]
    assert len(overlapping_groups(units)) == 1
    shards = plan_shards(units, 2)
    assert loads(shards) == [60, 60]
    assert shared_keys(shards) == {("x", ("x",)): [0, 1]}


def test_units_with_the_same_keys_stay_on_one_shard():
    # the toy target at several TP degrees: the later units find every key on disk; a second GPU would tune them again
    units = [unit(f"u{i}", k1=3, k2=3, k3=3) for i in range(3)]
    assert ids(plan_shards(units, 2)) == [["u0", "u1", "u2"]]


def test_never_more_shards_than_units_and_never_an_empty_one():
    units = [unit("a", a=3), unit("b", b=1)]
    assert ids(plan_shards(units, 8)) == [["a"], ["b"]]
    assert ids(plan_shards(units, 1)) == [["a", "b"]]
    assert plan_shards([], 4) == []
    with pytest.raises(ValueError):
        plan_shards(units, 0)


def test_unknown_config_counts_count_zero():
    u = unit("a", a=None, b=4)
    assert unit_configs(u) == 4


def test_fla_plan_over_gpus():
    # qwen3.5-9b at TP 1, 2, 4, 8 on upstream FLA: every unit is placed once, the loads are even within a unit
    p = plan(BuildSpec(model=models.preset("qwen3.5-9b"), tp=(1, 2, 4, 8)))
    for n in (2, 3, 4, 8):
        shards = plan_shards(p.units, n)
        assert len(shards) == min(n, len(p.units))
        assert sorted(u.id for s in shards for u in s) == sorted(u.id for u in p.units)
        assert max(loads(shards)) - min(loads(shards)) <= max(unit_configs(u) for u in p.units)


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
        BuildSpec(model=models.preset("qwen3.5-9b"), gpus=bad)


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
    from autotune_cache.errors import CacheDirError
    from autotune_cache.cache.fingerprint import Fingerprint
    from autotune_cache.cache.manifest import Manifest
    from autotune_cache.builder.orchestrator import Build

    b = Build(plan(BuildSpec(model=models.preset("qwen3.5-9b"), targets=("toy_target",), emulate=True, gpus=2)),
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
