"""Winner selection (selection.py): the pure rule, then a real emulated build whose fake timings are chosen per
config, read back by Triton's own disk-cache code in a fresh process."""
import json
import os
import subprocess
import sys

import pytest

from autotune_cache import BuildSpec, build, models
from autotune_cache.selection import Candidate, Settings, choose, shortlist
from autotune_cache.triton_cache import read_autotune
from helpers import TESTS


def test_a_challenger_within_the_noise_does_not_replace_the_incumbent():
    d = choose([Candidate(order=2, samples=(1.00, 1.00)), Candidate(order=0, samples=(1.01, 1.015))], noise=0.02)
    assert (d.winner, d.fastest, d.kept_incumbent) == (1, 0, True)


def test_a_challenger_beyond_the_noise_wins():
    d = choose([Candidate(order=2, samples=(1.00, 1.00)), Candidate(order=0, samples=(1.03, 1.03))], noise=0.02)
    assert (d.winner, d.kept_incumbent) == (0, False)


def test_the_median_not_one_lucky_timing_decides():
    # order 1 had one fast outlier; its median is 10% slower
    d = choose([Candidate(order=1, samples=(0.5, 1.1, 1.1, 1.1)), Candidate(order=0, samples=(1.0, 1.0, 1.0))],
               noise=0.0)
    assert d.winner == 1 and d.medians == (1.1, 1.0)


def test_overlapping_timings_keep_the_incumbent_beyond_the_noise_band():
    # medians 3% apart, but the incumbent's fast timings reach into the challenger's: not beaten beyond noise
    d = choose([Candidate(order=2, samples=(1.00, 0.99, 1.00, 1.03, 1.01)),
                Candidate(order=0, samples=(0.99, 1.01, 1.03, 1.04, 1.05))], noise=0.02)
    assert (d.winner, d.fastest, d.kept_incumbent) == (1, 0, True)
    # the same medians with tight timings: the challenger wins
    d = choose([Candidate(order=2, samples=(1.00, 1.00, 1.00, 1.00, 1.00)),
                Candidate(order=0, samples=(1.03, 1.03, 1.03, 1.03, 1.03))], noise=0.02)
    assert (d.winner, d.kept_incumbent) == (0, False)


def test_choose_needs_a_candidate():
    with pytest.raises(ValueError):
        choose([], noise=0.02)


def test_shortlist_keeps_the_fastest_within_the_window_and_drops_failures():
    timings = {"a": [1.0, 1, 1], "b": [1.05, 1, 1], "c": [1.2, 1, 1], "d": [float("inf")] * 3, "e": [1.01, 1, 1]}
    assert shortlist(timings, Settings(window=0.10)) == ["a", "e", "b"]
    assert shortlist(timings, Settings(window=0.10, top=2)) == ["a", "e"]
    assert shortlist({"d": [float("inf")] * 3}, Settings()) == []


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Settings(noise=-0.1)
    with pytest.raises(ValueError):
        Settings(mode="fastest")


# -- a real (emulated) build ------------------------------------------------------------------------------------
B32 = "BLOCK: 32, num_warps: 1, num_ctas: 1, num_stages: 3, maxnreg: None"
B64 = "BLOCK: 64, num_warps: 2, num_ctas: 1, num_stages: 3, maxnreg: None"
B128 = "BLOCK: 128, num_warps: 4, num_ctas: 1, num_stages: 3, maxnreg: None"


def _build(tmp_path, monkeypatch, times, **selection):
    monkeypatch.setenv("AUTOTUNE_CACHE_FAKE_TIMES", json.dumps(times))
    spec = BuildSpec(model=models.preset("qwen3.5-9b"), targets=("toy_target",), max_tokens=1024,
                     cache_dir=str(tmp_path), emulate=True, selection=Settings(**selection))
    m = build(spec, progress=False)
    (entry,) = m.entries.values()
    return m, entry


def _served_config(cache_dir) -> str:
    """The config Triton itself picks from the cache in a fresh process (its own check_disk_cache and min)."""
    code = ("from autotune_cache import emulation; emulation.install()\n"
            "from autotune_cache.models import preset\n"
            "import toy_kernels\n"
            "toy_kernels.run(preset('qwen3.5-9b').per_rank(1), {'act': 'bfloat16'}, 1024, 'cpu')\n"
            "print(emulation.bench_calls, toy_kernels.toy_scale_kernel.best_config)\n")
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache_dir), "TRITON_CACHE_AUTOTUNING": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("AUTOTUNE_CACHE_FAKE_TIMES", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    calls, _, config = out.stdout.strip().splitlines()[-1].partition(" ")
    assert calls == "0"   # a hit: nothing benchmarked
    return config


def test_build_keeps_the_incumbent_within_the_noise_and_triton_serves_it(tmp_path, monkeypatch):
    # BLOCK 64 is fastest by 1% in every timing; BLOCK 32 comes first in the kernel's list
    m, entry = _build(tmp_path, monkeypatch, {B32: [1.01], B64: [1.0], B128: [3.0]})
    sel = entry.selection
    assert sel["kept_incumbent"] is True and sel["noise"] == 0.02
    cands = {c["order"]: c for c in sel["candidates"]}
    assert set(cands) == {0, 1}   # BLOCK 128 is beyond the 10% window: not timed again
    assert all(len(c["samples"]) == 1 + Settings().rounds for c in cands.values())
    assert cands[0]["median"] == 1.01 and cands[1]["median"] == 1.0
    assert entry.winner["kwargs"] == {"BLOCK": 32}
    assert read_autotune(tmp_path / entry.file).winner["kwargs"] == {"BLOCK": 32}
    assert _served_config(tmp_path) == B32
    unit = next(iter(m.units.values()))
    assert unit.bench_seconds is not None and 0 <= unit.bench_seconds <= unit.seconds


def test_build_takes_a_challenger_that_wins_beyond_the_noise(tmp_path, monkeypatch):
    m, entry = _build(tmp_path, monkeypatch, {B32: [1.05], B64: [1.0], B128: [3.0]})
    assert entry.selection["kept_incumbent"] is False
    assert entry.winner["kwargs"] == {"BLOCK": 64} and _served_config(tmp_path) == B64


def test_a_lucky_screening_timing_is_timed_again(tmp_path, monkeypatch):
    # BLOCK 128 wins the screening by luck (0.9), then is 1.2 every time: BLOCK 64 wins
    m, entry = _build(tmp_path, monkeypatch, {B32: [2.0], B64: [1.0], B128: [0.9, 1.2]}, window=0.5)
    cands = {c["order"]: c for c in entry.selection["candidates"]}
    assert set(cands) == {1, 2} and cands[2]["samples"][0] == 0.9 and cands[2]["median"] == 1.2
    assert entry.winner["kwargs"] == {"BLOCK": 64} and _served_config(tmp_path) == B64


def test_triton_mode_takes_the_single_pass_minimum(tmp_path, monkeypatch):
    m, entry = _build(tmp_path, monkeypatch, {B32: [1.01], B64: [1.0], B128: [3.0]}, mode="triton")
    assert entry.selection is None and entry.winner["kwargs"] == {"BLOCK": 64}
    assert _served_config(tmp_path) == B64
