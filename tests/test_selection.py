"""Winner selection (selection.py): the pure rule, then a real emulated build whose fake timings are chosen per
config, read back by Triton's own disk-cache code in a fresh process."""
import json
import os
import subprocess
import sys

import pytest
from helpers import TESTS, run_cli

from autotune_cache import BuildSpec, build, shapes
from autotune_cache.builder.selection import Candidate, Settings, choose, screen_losses, shortlist
from autotune_cache.cache.layout import read_autotune


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


def test_a_challenger_faster_by_less_than_the_floor_does_not_replace_the_incumbent():
    # 10 us kernels 3% apart (0.3 us) with tight timings: beyond the 2% noise, not beyond a 0.5 us floor
    inc, fast = Candidate(order=0, samples=(0.0103,) * 5), Candidate(order=1, samples=(0.0100,) * 5)
    assert choose([inc, fast], noise=0.02).winner == 1
    assert choose([inc, fast], noise=0.02, floor=0.0005).winner == 0


def test_the_winner_is_fastest_over_every_token_count_measured():
    # the incumbent wins at the key's own size by 5% but is 25% slower at the probe's
    inc = Candidate(order=0, samples=(1.00,) * 5, probes=((0.0125,) * 5,))
    other = Candidate(order=3, samples=(1.05,) * 5, probes=((0.0100,) * 5,))
    d = choose([inc, other], noise=0.02)
    assert (d.winner, d.fastest) == (1, 1) and d.losses == (1.25, 1.05)
    # equal at the probe: back to the incumbent, faster at the key's own size
    d = choose([inc, Candidate(order=3, samples=(1.05,) * 5, probes=((0.0125,) * 5,))], noise=0.02)
    assert (d.winner, d.fastest, d.kept_incumbent) == (0, 0, False)
    # a third candidate equal to the fastest everywhere, listed earlier: kept
    third = Candidate(order=1, samples=(1.055,) * 5, probes=((0.0101,) * 5,))
    d = choose([inc, other, third], noise=0.02)
    assert (d.winner, d.fastest, d.band) == (2, 1, (1, 2))
    with pytest.raises(ValueError):
        choose([inc, Candidate(order=1, samples=(1.0,))], noise=0.02)


def test_choose_needs_a_candidate():
    with pytest.raises(ValueError):
        choose([], noise=0.02)


def test_shortlist_keeps_the_fastest_within_the_window_and_drops_failures():
    timings = {"a": [1.0, 1, 1], "b": [1.05, 1, 1], "c": [1.2, 1, 1], "d": [float("inf")] * 3, "e": [1.01, 1, 1]}
    assert shortlist(screen_losses(timings), Settings(window=0.10)) == ["a", "e", "b"]
    assert shortlist(screen_losses(timings), Settings(window=0.10, top=2)) == ["a", "e"]
    assert shortlist(screen_losses({"d": [float("inf")] * 3}), Settings()) == []


def test_shortlist_always_times_the_first_config_within_the_window():
    # five configs within 1%: the top 2 by screening luck, plus the first in list order
    timings = {"a": [1.009, 1, 1], "b": [1.004, 1, 1], "c": [1.0, 1, 1], "d": [1.001, 1, 1], "e": [1.5, 1, 1]}
    assert shortlist(screen_losses(timings), Settings(top=2)) == ["c", "d", "a"]


def test_shortlist_ranks_by_the_worst_loss_over_the_probes():
    timings = {"a": [1.0, 1, 1], "b": [1.02, 1, 1], "c": [1.05, 1, 1]}
    # at the probe, a is 30% slower than c; b 2% slower
    probe = {"a": 0.013, "b": 0.0102, "c": 0.010}
    assert shortlist(screen_losses(timings, (probe,)), Settings(window=0.10)) == ["b", "c"]
    # a config the probe did not time (or that failed there) is no candidate
    assert shortlist(screen_losses(timings, ({"a": 0.01, "b": float("inf")},)), Settings(window=0.10)) == ["a"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Settings(noise=-0.1)
    with pytest.raises(ValueError):
        Settings(mode="fastest")
    with pytest.raises(ValueError):
        Settings(probe_tokens=(0,))
    assert Settings(probe_tokens=(512, 64, 512)).probe_tokens == (64, 512)


# -- a real (emulated) build ------------------------------------------------------------------------------------
B32 = "BLOCK: 32, num_warps: 1, num_ctas: 1, num_stages: 3, maxnreg: None"
B64 = "BLOCK: 64, num_warps: 2, num_ctas: 1, num_stages: 3, maxnreg: None"
B128 = "BLOCK: 128, num_warps: 4, num_ctas: 1, num_stages: 3, maxnreg: None"


def _build(tmp_path, monkeypatch, times, **selection):
    """One toy key (NB = 1) tuned at 1024 tokens; no probe pass unless `probe_tokens` is given."""
    selection.setdefault("probe_tokens", ())
    monkeypatch.setenv("AUTOTUNE_CACHE_FAKE_TIMES", json.dumps(times))
    spec = BuildSpec(model=shapes.preset("qwen3.5-9b"), targets=("toy_target",), max_tokens=1024,
                     cache_dir=str(tmp_path), emulate=True, selection=Settings(**selection))
    m = build(spec, progress=False)
    (entry,) = m.entries.values()
    return m, entry


def _served_config(cache_dir) -> str:
    """The config Triton itself picks from the cache in a fresh process (its own check_disk_cache and min)."""
    code = ("from autotune_cache.builder import emulation; emulation.fake_gpu()\n"
            "from autotune_cache.shapes import preset\n"
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


def test_build_probes_a_small_size_and_takes_the_config_fast_at_both(tmp_path, monkeypatch):
    # BLOCK 32 is first in the list and fastest at the key's own 1024 tokens (n = 16384), but 25% slower at the
    # 512-token probe (n = 8192) than BLOCK 64, which is 1.5% slower at 1024: BLOCK 64 wins
    times = {B32: [1.0], f"{B32} @ n=8192": [0.0125], B64: [1.015], f"{B64} @ n=8192": [0.010], B128: [3.0]}
    m, entry = _build(tmp_path, monkeypatch, times, probe_tokens=(512,), window=0.3)
    sel = entry.selection
    assert sel["probe_tokens"] == [512] and sel["kept_incumbent"] is False
    cands = {c["order"]: c for c in sel["candidates"]}
    assert set(cands) == {0, 1}
    assert [p["tokens"] for p in cands[0]["probes"]] == [512]
    assert cands[0]["probes"][0]["median"] == 0.0125 and cands[1]["probes"][0]["median"] == 0.010
    assert (cands[0]["screen_loss"], cands[1]["screen_loss"]) == (1.25, 1.015)
    (screening,) = sel["probe_screening"]   # every config's, BLOCK 128 too (default fake timing)
    assert screening["tokens"] == 512 and set(screening["p50"]) == {B32, B64, B128}
    assert screening["p50"][B32] == 0.0125
    assert len(cands[0]["probes"][0]["samples"]) == 1 + Settings().rounds
    assert entry.tokens == 1024 and entry.winner["kwargs"] == {"BLOCK": 64}
    # the probe left no autotune file of its own (same key, NB = 1): the one file holds the 1024-token timings
    files = sorted(p.name for p in tmp_path.rglob("*.autotune.json"))
    assert files == ["toy_scale_kernel.autotune.json"] and len(m.entries) == 1
    parsed = read_autotune(tmp_path / entry.file)
    assert parsed.winner["kwargs"] == {"BLOCK": 64} and _served_config(tmp_path) == B64
    # the default 10% window: BLOCK 32's worst loss (25%) puts it out of the candidates; the file still says 64
    m, entry = _build(tmp_path / "window", monkeypatch, times, probe_tokens=(512,))
    assert [c["order"] for c in entry.selection["candidates"]] == [1]
    assert entry.winner["kwargs"] == {"BLOCK": 64} and _served_config(tmp_path / "window") == B64
    # without the probe: BLOCK 32, as before
    m, entry = _build(tmp_path / "plain", monkeypatch, times)
    assert entry.winner["kwargs"] == {"BLOCK": 32} and "probes" not in entry.selection["candidates"][0]


def test_a_probe_that_changes_nothing_keeps_the_incumbent(tmp_path, monkeypatch):
    times = {B32: [1.01], f"{B32} @ n=8192": [0.0100], B64: [1.0], f"{B64} @ n=8192": [0.0100], B128: [3.0]}
    m, entry = _build(tmp_path, monkeypatch, times, probe_tokens=(512,))
    assert entry.selection["kept_incumbent"] is True and entry.winner["kwargs"] == {"BLOCK": 32}
    assert _served_config(tmp_path) == B32


def test_every_probe_token_count_is_timed(tmp_path, monkeypatch):
    # 256 and 512 tokens (n = 4096, 8192): BLOCK 32 loses 25% at 256 only
    times = {B32: [1.0], f"{B32} @ n=4096": [0.0125], B64: [1.015], f"{B64} @ n=4096": [0.010], B128: [3.0]}
    m, entry = _build(tmp_path, monkeypatch, times, probe_tokens=(512, 256), window=0.3)
    sel = entry.selection
    assert sel["probe_tokens"] == [256, 512] and [s["tokens"] for s in sel["probe_screening"]] == [256, 512]
    assert all([p["tokens"] for p in c["probes"]] == [256, 512] for c in sel["candidates"])
    assert entry.winner["kwargs"] == {"BLOCK": 64} and _served_config(tmp_path) == B64


@pytest.mark.parametrize("flag,expected", [((), [512]), (("--probe-tokens", "none"), []),
                                           (("--probe-tokens", "256"), [256])])
def test_probe_tokens_from_the_command_line(tmp_path, flag, expected):
    times = {B32: [1.0], B64: [1.015], B128: [3.0]}   # two candidates: a decision is recorded either way
    run_cli("build", "--target", "toy_target", "--max-tokens", "1024", "--cache-dir", tmp_path, "--emulate",
            "--no-progress", *flag, env={"AUTOTUNE_CACHE_FAKE_TIMES": json.dumps(times)},
            check=0)
    (entry,) = json.loads((tmp_path / "manifest.json").read_text())["entries"].values()
    assert entry["selection"]["probe_tokens"] == expected
