"""The benchmark scripts on the CPU: scripts/bench_winners.py (winner quality of two caches),
scripts/bench_stability.py (winner stability over builds) and scripts/bench_install.py (install()'s cost). --help,
the refusal without a GPU, the pure comparison and noise rules on manifests of real emulated builds of the toy
target, and emulated smoke runs of the scripts (their timings are fake: these check the plumbing: capture, per-cache
winner resolution, in-process tuning of a missing key, what install() ran, JSON)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
from helpers import FLA_DEVICE_KEYS

from autotune_cache.cache.layout import read_autotune

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import _kernel_timing as kt  # noqa: E402
import bench_install  # noqa: E402
import bench_stability  # noqa: E402
import bench_winners  # noqa: E402


def script(name, *args):
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], capture_output=True, text=True,
                          timeout=900)


B32 = "BLOCK: 32, num_warps: 1, num_ctas: 1, num_stages: 3, maxnreg: None"
B128 = "BLOCK: 128, num_warps: 4, num_ctas: 1, num_stages: 3, maxnreg: None"
# Fake timings (emulation.FAKE_TIMES_ENV): BLOCK 128 is fastest everywhere; in build c, BLOCK 32 is fastest at the
# NB = 1 key's sizes (its 1024-token call and the 512-token probe: n = tokens x 16 heads).
TIMES = {B128: [0.5]}
TIMES_C = {**TIMES, f"{B32} @ n=16384": [0.25], f"{B32} @ n=8192": [0.25]}


def toy_build(cache_dir, max_tokens, times=None):
    return helpers.toy_build(cache_dir, fake_times=times or TIMES, max_tokens=max_tokens)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """a1, a2: the same spec (NB 1-3). c: up to 7000 tokens (NB 1-7), with other fake timings at the NB = 1 key:
    another winner there, the same at NB 2 and 3. b: 1024 tokens (NB 1 only)."""
    root = tmp_path_factory.mktemp("builds")
    return {name: (root / name, toy_build(root / name, tokens, times))
            for name, tokens, times in (("a1", 3000, None), ("a2", 3000, None), ("c", 7000, TIMES_C),
                                        ("b", 1024, None))}


def winners_by_nb(manifest):
    return {e.key[1]: kt.config_dict(e.winner) for e in manifest.entries.values()}


def files_of(d):
    return {p.relative_to(d).as_posix(): p.stat().st_mtime_ns for p in Path(d).rglob("*")}


# -- --help and no GPU -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,words", [("bench_winners.py", ["--ours", "--baseline", "do_bench", "in-process",
                                                              "--json-out", "--emulate"]),
                                        ("bench_stability.py", ["--dirs", "--retime", "90%", "2%", "--json-out",
                                                                "--emulate"])])
def test_help(name, words):
    proc = script(name, "--help")
    assert proc.returncode == 0, proc.stderr
    for word in words:
        assert word in proc.stdout


def test_without_gpu_exit_2_with_a_message(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = script("bench_winners.py", "--ours", tmp_path, "--baseline", tmp_path)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
    proc = script("bench_stability.py", "--builds", "2", "--work-dir", tmp_path / "w")
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr
    proc = script("bench_stability.py", "--dirs", tmp_path, tmp_path, "--retime")
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


def test_missing_cache_dir_exit_2(tmp_path):
    proc = script("bench_winners.py", "--ours", tmp_path / "nope", "--baseline", tmp_path, "--emulate")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


# -- pure rules -------------------------------------------------------------------------------------------------
def test_noise_verdict():
    assert kt.noise_verdict([1.10, 1.12, 1.11], [1.00, 1.01, 1.02]) == "slower"
    assert kt.noise_verdict([1.00, 1.01, 1.02], [1.10, 1.12, 1.11]) == "faster"
    # median(ours) above max(baseline) but ranges overlap: still noise under the disjoint rule
    assert kt.noise_verdict([1.00, 1.06, 1.07], [1.01, 1.02, 1.05]) == "noise"
    assert kt.noise_verdict([], [1.0]) == "n/a"


def test_config_identity_counts_warps_and_stages():
    a = {"kwargs": {"BV": 32}, "num_warps": 4, "num_stages": 3, "num_ctas": 1, "maxnreg": None, "pre_hook": None}
    b = {**a, "num_stages": 4}
    assert kt.config_dict(a) != kt.config_dict(b)
    assert kt.config_text(a) == "BV=32 warps=4 stages=3" and kt.config_text(b) == "BV=32 warps=4 stages=4"
    assert kt.key_id("k", (128, 1, "torch.bfloat16")) == kt.key_id("k", [128, 1, "torch.bfloat16"])
    assert kt.key_id("k", (128, True)) != kt.key_id("k", (128, 1))


def test_summarize_call_ratio_whole_call_and_flags():
    cfg = {"kwargs": {"B": 1}, "num_warps": 4, "num_stages": 3, "num_ctas": 1, "maxnreg": None}
    other = {**cfg, "num_warps": 8}

    def launch(kernel, count, ours_cfg, ours_t, base_t, base_source="cache"):
        return {"kernel": kernel, "key": [1, "torch.float32"], "count": count,
                "configs": {"A": {"config": ours_cfg, "text": kt.config_text(ours_cfg)},
                            "B": {"config": cfg, "text": kt.config_text(cfg)}},
                "sources": {"A": "cache", "B": base_source}, "times_ms": {"A": ours_t, "B": base_t}, "errors": {}}
    call = {"tokens": 512, "launches": [launch("k1", 2, cfg, [1.0, 1.0, 1.0], [1.0, 1.1, 0.9]),
                                        launch("k2", 1, other, [3.0, 3.1, 3.2], [2.0, 2.1, 2.2], "tuned in-process")]}
    res = bench_winners.summarize_call(call, "A", "B")
    k1, k2 = res["kernels"]
    assert not k1["differ"] and k1["verdict"] == "noise" and k1["ratio"] == pytest.approx(1.0)
    assert k2["differ"] and k2["verdict"] == "slower" and k2["ratio"] == pytest.approx(3.1 / 2.1)
    # whole call per repeat: 2 x k1 + k2
    assert res["whole_call"]["times_ms"]["A"] == pytest.approx([5.0, 5.1, 5.2])
    assert res["whole_call"]["times_ms"]["B"] == pytest.approx([4.0, 4.3, 4.0])
    assert res["whole_call"]["verdict"] == "slower"
    assert res["in_process"] == ["k2 1|fp32 (B)"]
    s = bench_winners.summary([res])
    assert s["slower_beyond_noise"] == ["T=512 k2"] and s["same_config_flagged"] == 0 and s["differ"] == 1


def test_stability_of_two_builds_of_one_spec(builds):
    (d1, m1), (d2, m2) = builds["a1"], builds["a2"]
    report = bench_stability.compare([bench_stability.load_build("b1", d1), bench_stability.load_build("b2", d2)])
    s = report["summary"]
    assert (s["keys"], s["compared"], s["same"], s["differ"]) == (3, 3, 3, 0)
    assert s["fraction_same"] == 1.0 and s["same_target_met"] and s["spread_target_met"]
    assert all(r["in_run_regret"] == 0 for r in report["rows"])
    assert winners_by_nb(m1) == winners_by_nb(m2)   # the fake benchmarker is deterministic


def test_stability_detects_other_winners(builds):
    (da, ma), (dc, mc) = builds["a1"], builds["c"]
    report = bench_stability.compare([bench_stability.load_build("a", da), bench_stability.load_build("c", dc)])
    wa, wc = winners_by_nb(ma), winners_by_nb(mc)
    rows = {r["key"][1]: r for r in report["rows"]}
    assert sorted(rows) == sorted(wc)   # union: NB 1-7
    for nb, r in rows.items():
        if nb in wa:
            assert r["same"] == (wa[nb] == wc[nb]) and r["missing"] == []
        else:
            assert r["same"] is None and r["missing"] == ["a"]
    differing = [nb for nb in wa if wa[nb] != wc[nb]]
    assert differing == [1]
    s = report["summary"]
    assert (s["compared"], s["differ"], s["incomplete"]) == (3, len(differing), 4)
    assert s["fraction_same"] == pytest.approx((3 - len(differing)) / 3) and not s["same_target_met"]
    # spread and in-run regret recomputed here from the autotune files
    nb = differing[0]
    ea = next(e for e in ma.entries.values() if e.key[1] == nb)
    ec = next(e for e in mc.entries.values() if e.key[1] == nb)
    assert rows[nb]["best_spread"] == pytest.approx(max(ea.best, ec.best) / min(ea.best, ec.best) - 1)
    regret = 0.0
    for d, e in ((da, ea), (dc, ec)):
        timings = {json.dumps(kt.config_dict(c), sort_keys=True): t[0] for c, t in read_autotune(d / e.file).timings}
        own = timings[json.dumps(kt.config_dict(e.winner), sort_keys=True)]
        for w in (ea.winner, ec.winner):
            regret = max(regret, timings[json.dumps(kt.config_dict(w), sort_keys=True)] / own - 1)
    assert regret > 0 and rows[nb]["in_run_regret"] == pytest.approx(regret)
    assert rows[nb]["call"]["tokens"] == ea.tokens


def test_stability_summary_uses_the_retimed_spread_when_measured():
    row = {"same": False, "best_spread": 0.10, "in_run_regret": 0.05, "retimed": {"spread": 0.01}}
    same = {"same": True, "best_spread": 0.03, "in_run_regret": 0.0}
    s = bench_stability.summarize([row, same, {**same, "best_spread": 0.01}])
    assert s["fraction_same"] == pytest.approx(2 / 3) and s["max_best_spread_differing"] == 0.10
    assert s["max_retimed_spread_differing"] == 0.01 and s["spread_target_met"]
    assert s["noise_reference_best_spread_same_winner"] == {"median": 0.03, "max": 0.03}
    assert not bench_stability.summarize([{**row, "retimed": None}])["spread_target_met"]
    assert bench_stability.summarize([{**same, "same": None}])["fraction_same"] is None


# -- emulated smoke runs ----------------------------------------------------------------------------------------
def test_stability_script_on_dirs(builds, tmp_path):
    (da, _), (dc, _) = builds["a1"], builds["c"]
    out = tmp_path / "s.json"
    proc = script("bench_stability.py", "--dirs", da, dc, "--json-out", out)   # no GPU needed to compare
    assert proc.returncode == 0, proc.stderr
    assert kt.EMULATED_NOTE in proc.stdout and "same winner in all builds" in proc.stdout
    report = json.loads(out.read_text())
    expected = bench_stability.compare([bench_stability.load_build("build1", da),
                                        bench_stability.load_build("build2", dc)])
    assert report["summary"] == json.loads(json.dumps(expected["summary"])) and report["emulated"]


def test_stability_script_retimes_differing_winners(builds, tmp_path):
    (da, ma), (dc, mc) = builds["a1"], builds["c"]
    before = files_of(da), files_of(dc)
    out = tmp_path / "s.json"
    proc = script("bench_stability.py", "--dirs", da, dc, "--retime", "--emulate", "--repeats", "3", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    wa, wc = winners_by_nb(ma), winners_by_nb(mc)
    differing = [r for r in report["rows"] if r["same"] is False]
    assert len(differing) == sum(wa[nb] != wc[nb] for nb in wa)
    for r in differing:
        nb = r["key"][1]
        by = {tuple(c["labels"]): c for c in r["retimed"]["by_config"]}
        # each build's own winner, resolved from its dir in the timing process, timed 3 times
        assert by[("build1",)]["config"] == kt.config_text(wa[nb])
        assert by[("build2",)]["config"] == kt.config_text(wc[nb])
        assert all(len(c["times_ms"]) == 3 for c in by.values())
        assert r["retimed"]["verdict"] in ("slower", "noise")
    assert report["summary"]["max_retimed_spread_differing"] is not None
    assert (files_of(da), files_of(dc)) == before   # nothing written into the builds


def test_stability_script_builds(tmp_path):
    out = tmp_path / "s.json"
    proc = script("bench_stability.py", "--builds", "2", "--target", "toy_target", "--max-tokens", "2048",
                  "--work-dir", tmp_path / "w", "--emulate", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [Path(b["dir"]).name for b in report["builds"]] == ["build-1", "build-2"]
    assert all((Path(b["dir"]) / "manifest.json").is_file() for b in report["builds"])
    assert report["summary"]["compared"] == 2 and report["summary"]["fraction_same"] == 1.0
    # a second run into the same work dir is refused: a build there would only fill what is missing
    proc = script("bench_stability.py", "--builds", "2", "--target", "toy_target", "--max-tokens", "2048",
                  "--work-dir", tmp_path / "w", "--emulate", "--json-out", out)
    assert proc.returncode == 2 and "not empty" in proc.stderr


def test_winners_script_resolves_each_caches_winner(builds, tmp_path):
    (da, ma), (dc, mc) = builds["a1"], builds["c"]
    before = files_of(da), files_of(dc)
    out = tmp_path / "w.json"
    proc = script("bench_winners.py", "--ours", da, "--baseline", dc, "--baseline-label", "c", "--target",
                  "toy_target", "--tokens", "1024,3000", "--repeats", "2", "--emulate", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    assert kt.EMULATED_NOTE in proc.stdout
    report = json.loads(out.read_text())
    wa, wc = winners_by_nb(ma), winners_by_nb(mc)
    assert [r["tokens"] for r in report["results"]] == [1024, 3000]
    for res, nb in zip(report["results"], (1, 3), strict=True):
        (row,) = res["kernels"]
        assert row["sources"] == {"ours": "cache", "c": "cache"} and res["in_process"] == []
        assert row["configs"] == {"ours": kt.config_text(wa[nb]), "c": kt.config_text(wc[nb])}
        assert row["differ"] == (wa[nb] != wc[nb])
        assert len(row["times_ms"]["ours"]) == 2 and res["whole_call"] is not None
    assert any(r["kernels"][0]["differ"] for r in report["results"])
    assert (files_of(da), files_of(dc)) == before


def test_winners_script_reports_a_key_missing_from_a_cache(builds, tmp_path):
    (da, _), (db, _) = builds["a1"], builds["b"]
    before = files_of(db)
    out = tmp_path / "w.json"
    proc = script("bench_winners.py", "--ours", da, "--baseline", db, "--target", "toy_target", "--tokens", "3000",
                  "--repeats", "1", "--emulate", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    assert "tuned in-process, not from the cache" in proc.stdout
    (res,) = json.loads(out.read_text())["results"]
    (row,) = res["kernels"]
    assert row["sources"] == {"ours": "cache", "baseline": "tuned in-process"}   # NB=3 is not in b
    assert res["in_process"] == ["toy_scale_kernel 128,3|bf16,bf16 (baseline)"]
    assert files_of(db) == before


@pytest.mark.slow
def test_winners_script_on_fla(tmp_path, toy_caches, monkeypatch):
    """The real FLA serving call under the fake GPU: every one of the 6 kernels captured and resolved from the cache
    (l2norm launched twice, for q and k, with one key). The cache is the FLA key tests' build (qwen3.5-9b TP 1 to
    1024 tokens, the GPU host's triton_key: conftest), served with the same keys."""
    cache = toy_caches.fla(tmp_path / "fla")
    monkeypatch.setenv("AUTOTUNE_CACHE_DEVICE_KEYS", str(FLA_DEVICE_KEYS))   # the script's processes inherit it
    out = tmp_path / "w.json"
    proc = script("bench_winners.py", "--ours", cache, "--baseline", cache, "--tokens", "1024", "--repeats", "1",
                  "--emulate", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    (res,) = json.loads(out.read_text())["results"]
    kernels = {r["kernel"]: r for r in res["kernels"]}
    assert sorted(kernels) == sorted(["l2norm_fwd_kernel", "chunk_local_cumsum_scalar_kernel",
                                      "chunk_gated_delta_rule_fwd_kkt_solve_kernel", "recompute_w_u_fwd_kernel",
                                      "chunk_gated_delta_rule_fwd_kernel_h_blockdim64", "chunk_fwd_kernel_o"])
    assert kernels["l2norm_fwd_kernel"]["count"] == 2
    for r in kernels.values():
        assert r["sources"] == {"ours": "cache", "baseline": "cache"} and not r["differ"] and not r["errors"]


# -- scripts/bench_install.py: install()'s cost, and the first call after it -------------------------------------
def test_install_bench_end_to_end_on_a_toy_cache(toy_caches, tmp_path):
    cache = toy_caches.copy(tmp_path / "c")
    out = tmp_path / "install.json"
    proc = script("bench_install.py", "--cache-dir", cache, "--runs", "1", "--full-check-too", "--first-call",
                  "--emulate", "--target", "toy_target", "--tokens", "1024", "--no-warmup", "--json-out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["manifest_records_triton_files"] and set(report["cases"]) == {
        "deferred, warm", "full check at install, warm"}
    deferred, full = report["cases"]["deferred, warm"], report["cases"]["full check at install, warm"]
    for case in (deferred, full):
        (p,) = case["processes"]
        assert p["report"]["verified"] and p["report"]["copy_dir"] and p["report"]["mismatches"] == []
        assert p["lookups"] == {"lookups": 1, "hits": 1, "misses": 0}
        assert p["after_first_call"] == {"triton_key_runs": 1, "ptxas_runs": 1}   # never twice, whoever ran it
        assert case["install_plus_first_call_s"]["median"] == pytest.approx(p["install_s"] + p["first_call_s"],
                                                                            abs=2e-4)
    # the deferred install() hashes no libtriton and runs no ptxas; the full check does both at install
    assert deferred["processes"][0]["at_install"] == {"triton_key_runs": 0, "ptxas_runs": 0}
    assert full["processes"][0]["at_install"] == {"triton_key_runs": 1, "ptxas_runs": 1}
    assert full["processes"][0]["report"]["keys_deferred"] is False
    assert "install()" in proc.stdout and "install+call" in proc.stdout


def _filesystem(path):
    """The type of the filesystem `path` is on (/proc/self/mountinfo: the longest mount point above it)."""
    best, kind = "", None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount, fstype = fields[4], fields[fields.index("-") + 1]
        if str(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


@pytest.mark.skipif(sys.platform != "linux", reason="mincore and posix_fadvise")
def test_install_bench_cold_evicts_the_pages_of_the_files_it_names(tmp_path):
    if _filesystem(tmp_path) in ("tmpfs", "ramfs", "overlay", None):
        pytest.skip(f"{tmp_path} is on {_filesystem(tmp_path)}: its pages are its storage, or fadvise is not passed on")
    data, other = tmp_path / "data.bin", tmp_path / "other.bin"
    data.write_bytes(os.urandom(8 << 20))
    other.write_bytes(os.urandom(1 << 20))
    os.sync()   # dirty pages are not dropped: write them back first
    data.read_bytes(), other.read_bytes()
    assert bench_install.resident([data]) == 1.0
    bench_install.evict([data])
    assert bench_install.resident([data]) < 0.5
    assert bench_install.resident([other]) == 1.0   # only what it names
