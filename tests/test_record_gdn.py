"""Parity with the GDN target: a record of the fla target's serving call, built with `build --from-record`, gives the
very autotune files the target's own build gives (and, with the GPU host's triton_key and backend hash, the
directory names that host wrote). "Same" under the fake GPU: the same file names (the dir is the disk key) holding
the same key and config list; the timings, and so the winners, are the fake benchmarker's."""
import json
import os
import shutil

import pytest
from helpers import FLA_DEVICE_KEYS, run_cli
from test_record import autotune_files, run

from autotune_cache import BuildSpec, build, shapes

pytest.importorskip("fla")
pytestmark = pytest.mark.slow
DEVICE_KEYS = FLA_DEVICE_KEYS


def test_a_record_of_the_gdn_call_builds_the_gdn_targets_files(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE_DEVICE_KEYS", str(DEVICE_KEYS))   # children inherit it
    target_cache, replay_cache, rec = tmp_path / "target", tmp_path / "replay", tmp_path / "gdn.jsonl"
    build(BuildSpec(model=shapes.preset("qwen3.5-9b"), tp=(1,), max_tokens=64, cache_dir=str(target_cache),
                    emulate=True), progress=False)
    # the serving call (T=64) recorded against the target's cache: every lookup a hit, each naming its file
    served = run("--cache", target_cache, "--autotuning", "--record", rec, "fla:64")
    assert served["bench_calls"] == 0
    # the replay build starts from the target's compiled kernels (not its autotune files, nor its manifest): the
    # disk keys are Triton's to compute all over again, the 59 compiles are not this test's subject
    shutil.copytree(target_cache, replay_cache, ignore=shutil.ignore_patterns("*.autotune.json", "manifest.json*"))
    proc = run_cli("build", "--from-record", rec, "--cache-dir", replay_cache, "--emulate", "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["units"] == 6 and summary["same_file"] == 6 and summary["other_file"] == []
    target_files = autotune_files(target_cache)
    assert len(target_files) == 6 and autotune_files(replay_cache) == target_files
    expected = json.loads(DEVICE_KEYS.read_text())["autotune_dirs"]   # what the GPU host wrote for this call
    assert {name.split("/")[1].removesuffix(".autotune.json"): name.split("/")[0]
            for name in autotune_files(replay_cache)} == expected
    assert os.environ["AUTOTUNE_CACHE_DEVICE_KEYS"] == str(DEVICE_KEYS)
