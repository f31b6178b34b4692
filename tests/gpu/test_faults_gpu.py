"""On a CUDA GPU: real faults during a real FLA build (qwen3.5-9b, TP 2 and 8: two units).

The fault hook (AUTOTUNE_CACHE_FAULT, tests/faults.py) hits the second unit on its first attempt only:
- gpu-fault: a Triton kernel stores through a wild pointer, an illegal memory access (sticky: the child's CUDA
  context is dead, as after a faulting autotune config);
- oom: the child allocates GPU memory until torch raises OutOfMemoryError.
Expected: the first unit's entries kept as they were, the failure recorded by name, the retry (a fresh child)
completes, and a fresh serving process hits every key of both units. Each test prints a RELIABILITY.md row.
"""
import re

import pytest
from helpers import stand_in

from autotune_cache import BuildSpec, build, plan, shapes
from autotune_cache.cache.files import sha256_file
from autotune_cache.cache.layout import read_autotune

pytestmark = pytest.mark.gpu
TOKENS = "16,64,512,4096"

EXPECTED = {
    # torch: "CUDA error: an illegal memory access was encountered"; if CUDA takes the process down instead,
    # the parent names the signal.
    "gpu-fault": r"illegal memory access|CUDA error|killed by SIG",
    "oom": r"OutOfMemoryError|out of memory",
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_gpu_fault_in_second_unit_keeps_first_and_retry_completes(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("AUTOTUNE_CACHE_FAULT", f"1:{kind}")
    spec = BuildSpec(model=shapes.preset("qwen3.5-9b"), tp=(2, 8), max_tokens=4096, cache_dir=str(tmp_path))
    planned = [len(u.keys) for u in plan(spec).units]   # 6 and 6: FLA's 6 autotuned kernels, one NB bucket each
    m = build(spec, progress=False)

    u0, u1 = m.units.values()
    print(f"\nRELIABILITY {kind}: unit 1 {u1.status} after {u1.attempts} attempts; failures {u1.failures}; "
          f"unit 0 {u0.status}, {len(u0.entries)} entries, attempts {u0.attempts}; GPU {m.fingerprint.gpu_name}")
    assert not m.fingerprint.emulated
    # the first unit ran once, before the fault, and is kept
    assert (u0.status, u0.attempts, u0.failures) == ("done", 1, [])
    assert len(u0.entries) == planned[0]
    for name in u0.entries:
        entry = m.entries[name]
        assert sha256_file(tmp_path / name) == entry.sha256 and entry.tokens is not None
        assert list(read_autotune(tmp_path / name).key) == entry.key
    # the fault was recorded by name, and the retry in a fresh child completed
    assert (u1.status, u1.attempts, u1.error) == ("done", 2, None)
    assert len(u1.failures) == 1 and u1.failures[0].startswith("attempt 1: ")
    assert re.search(EXPECTED[kind], u1.failures[0]), u1.failures[0]
    assert len(u1.entries) == planned[1]
    for rel, rec in m.files.items():
        assert sha256_file(tmp_path / rel) == rec.sha256, rel
    # a fresh serving process hits every key of both units: nothing tuned again, nothing lost
    for tp in (2, 8):
        report = stand_in(tmp_path, "--model", "qwen3.5-9b", "--tp", tp, "--tokens", TOKENS)
        assert report["benchmarks"] == 0 and report["hits"] == report["lookups"] > 0, report
