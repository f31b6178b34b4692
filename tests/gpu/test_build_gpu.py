"""On a CUDA GPU: build qwen3.5-9b at TP 1 and 2 with the real FLA kernels, then a fresh serving process hits
every key at T in {16, 64, 512, 4096, 16384} with 0 benchmarks. AUTOTUNE_CACHE_GPU_DIR keeps the cache."""
import os
import tempfile

import pytest
from helpers import assert_only_entries_on_disk, stand_in

from autotune_cache import BuildSpec, build, shapes

pytestmark = pytest.mark.gpu
TOKENS = "16,64,512,4096,16384"


@pytest.fixture(scope="module")
def gpu_cache():
    cache = os.environ.get("AUTOTUNE_CACHE_GPU_DIR") or tempfile.mkdtemp(prefix="autotune-cache-gpu-")
    manifest = build(BuildSpec(model=shapes.preset("qwen3.5-9b"), tp=(1, 2), cache_dir=cache), progress=False)
    return cache, manifest


def test_build_is_complete(gpu_cache):
    _, manifest = gpu_cache
    assert {u.status for u in manifest.units.values()} == {"done"}
    assert not manifest.fingerprint.emulated and manifest.fingerprint.capability is not None


@pytest.mark.parametrize("tp", [1, 2])
def test_fresh_process_hits_every_key(gpu_cache, tp):
    cache, _ = gpu_cache
    report = stand_in(cache, "--model", "qwen3.5-9b", "--tp", tp, "--tokens", TOKENS)
    print(f"\nTP {tp}: " + "; ".join(f"{k}: lookups {s['lookups']} hits {s['hits']} benchmarks {s['benchmarks']}"
                                      for k, s in report["kernels"].items()))
    assert len(report["kernels"]) == 6
    assert report["benchmarks"] == 0 and report["hits"] == report["lookups"] > 0


def test_every_key_was_also_timed_at_the_probe_and_only_the_entries_are_on_disk(gpu_cache):
    cache, manifest = gpu_cache
    assert_only_entries_on_disk(cache, manifest)
    for entry in manifest.entries.values():
        # the 512-token call reaches every key but l2norm's of more than one NB bucket (NB = cdiv(T * H, 65536))
        reached = entry.kernel != "l2norm_fwd_kernel" or entry.key[1] == 1
        sel = entry.selection
        if not reached:   # no probe; one candidate within the window leaves no decision to record
            assert sel is None or sel["probe_tokens"] == [], (entry.kernel, sel)
            continue
        assert sel is not None and sel["probe_tokens"] == [512], (entry.kernel, sel)
        assert all(0 < c["probes"][0]["median"] < float("inf") for c in sel["candidates"])
        (screening,) = sel["probe_screening"]   # every config's screening at 512 tokens
        assert len(screening["p50"]) == entry.configs
        assert min(c["screen_loss"] for c in sel["candidates"]) >= 1.0


def test_compile_workers_on_the_emulated_gpu_left_every_kernel_the_child_needed(gpu_cache):
    # The workers compile on a fake copy of this GPU (device.read()); had any of their keys differed from the
    # real child's, the child would have compiled that kernel itself.
    # A child's pool report is on its first part (it waited there for all its parts' configs); on several GPUs
    # every child starts in the TP 1 unit (each owns keys of it), whose record keeps the longest wait.
    _, manifest = gpu_cache
    reports = [u.precompile for u in manifest.units.values() if u.precompile is not None]
    assert 1 <= len(reports) <= len({g for u in manifest.units.values() for g in (u.gpu or "").split(",")}), reports
    assert all(r["workers"] > 1 and r["failed"] == 0 for r in reports), reports
    for unit in manifest.units.values():
        assert unit.compiles == 0, (unit.id, unit.compiles)


def test_device_profile_matches_what_torch_and_triton_see():
    import torch
    from triton.runtime.driver import driver

    from autotune_cache.builder import device
    profile = device.read()
    assert profile is not None
    assert (profile.major, profile.minor) == torch.cuda.get_device_capability(0)
    assert profile.name == torch.cuda.get_device_name(0)
    assert profile.triton_properties() == driver.active.utils.get_device_properties(0)
    assert profile.total_memory == torch.cuda.get_device_properties(0).total_memory
