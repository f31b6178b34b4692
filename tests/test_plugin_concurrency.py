"""vLLM's process layout: the engine core and each TP worker load general plugins, so N processes call the plugin's
register() at once on one cache dir and (same cache path, same user) one overlay. Real processes on the fake sm_90
GPU, a toy cache (3 keys) built once:
- N concurrent register() calls all verify the dir, serve it from their own private copy, point Triton at the same
  overlay, hit every built key with the same winners, and leave the cache dir exactly as it was;
- a key the cache lacks is tuned by each of them at once into the shared overlay (Triton writes by os.replace): one
  valid file is left there, and a later process hits it;
- one process that refuses (strict mode with a public key that does not exist: vLLM lets the error end that process)
  leaves the others serving as before."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TESTS, listing

from autotune_cache.cache import trust
from autotune_cache.cache.layout import read_autotune

N = 4                      # the engine core and three TP workers
BAD = N                    # and one more process that refuses
BUILT = "1,1025,3000"      # NB 1, 2, 3: every key of the build
MISSED = 5000              # NB 5: not built


@pytest.fixture(scope="module")
def cache(tmp_path_factory, toy_caches):
    return toy_caches.copy(tmp_path_factory.mktemp("plugin-concurrency") / "cache")


def env_for(cache, tmp, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOTUNE_CACHE_", "TRITON_CACHE_"))}
    return {**env, "AUTOTUNE_CACHE_DIR": str(cache), "TMPDIR": str(tmp), **extra}


def start_together(cache, tmp, tokens, envs):
    """One plugin_worker per env, released at once; their JSON reports and exit codes, in order."""
    go = tmp / f"go-{time.monotonic_ns()}"
    procs = [subprocess.Popen([sys.executable, str(TESTS / "plugin_worker.py"), str(go), tokens],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(cache, tmp, **e))
             for e in envs]
    deadline = time.monotonic() + 120
    while len(list(tmp.glob(f"{go.name}.ready.*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.05)   # every one has imported torch and Triton and waits at the line
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert out.strip(), err[-3000:]
        outs.append((p.returncode, json.loads(out.strip().splitlines()[-1]), err))
    return outs


@pytest.fixture(scope="module")
def first_start(cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tmp")   # TMPDIR of every process: the default overlay lives under it
    before = listing(cache)
    bad = {"AUTOTUNE_CACHE_STRICT": "1", "AUTOTUNE_CACHE_PUBLIC_KEY": str(tmp / "no-such-key.pem")}
    outs = start_together(cache, tmp, f"{BUILT},{MISSED}", [{}] * N + [bad])
    return cache, tmp, before, outs


def test_concurrent_registers_verify_and_serve_alike(first_start):
    cache, tmp, before, outs = first_start
    good = outs[:N]
    assert all(code == 0 for code, _, _ in good), [err[-2000:] for _, _, err in good]
    reports = [r["report"] for _, r, _ in good]
    for r in reports:
        assert r["verified"] and not r["refused"] and r["copy_dir"] and not r["warnings"], r
        assert r["flipped"] == ["toy_kernels.toy_scale_kernel"]
    assert len({r["overlay_dir"] for r in reports}) == 1                     # one overlay
    assert len({r["copy_dir"] for r in reports}) == len(reports)             # a private copy each
    # Triton reads each process's own copy, and writes to the one overlay
    assert all(r["env"]["AUTOTUNE_CACHE_BASE"] == r["report"]["copy_dir"] for _, r, _ in good)
    assert {(r["env"]["TRITON_CACHE_DIR"], r["env"]["TRITON_CACHE_MANAGER"]) for _, r, _ in good} == {
        (reports[0]["overlay_dir"], "autotune_cache.serve.layered:LayeredCacheManager")}
    # the built keys: hits everywhere, the same winners; the missing key: benchmarked by those that looked it up
    # before another's file landed in the overlay (Triton takes no lock), read by the others
    per_process = [[(lk["key"], lk["hit"], lk["winner"]) for lk in r["lookups"]] for _, r, _ in good]
    built = [[x for x in p if x[0][1] != 5] for p in per_process]
    assert all(b == built[0] for b in built) and len(built[0]) == 3 and all(hit for _, hit, _ in built[0])
    missed = [[hit for key, hit, _ in p if key[1] == 5] for p in per_process]
    assert all(len(m) == 1 for m in missed) and not all(m[0] for m in missed), missed
    # the checked dir is exactly as it was, and still passes the same check
    assert listing(cache) == before
    assert trust.assess(cache, trust.Policy()).trusted


def test_one_refusal_leaves_the_others_working(first_start):
    _, _, _, outs = first_start
    code, out, err = outs[BAD]
    assert code == 1 and out["report"] is None and out["error"].split(":")[0].endswith("Error"), (out, err[-2000:])
    assert "no-such-key.pem" in out["error"]
    assert all(code == 0 for code, _, _ in outs[:N])


def test_the_shared_overlay_holds_one_valid_entry_that_a_later_start_hits(first_start):
    cache, tmp, _, outs = first_start
    overlay = outs[0][1]["report"]["overlay_dir"]
    files = sorted(Path(overlay).rglob("*.autotune.json"))
    assert len(files) == 1 and read_autotune(files[0]).key[1] == 5   # NB 5, written by one of them, whole
    ((code, later, err),) = start_together(cache, tmp, f"{BUILT},{MISSED}", [{}])
    assert code == 0, err[-2000:]
    assert all(lk["hit"] for lk in later["lookups"]) and later["benchmarked"] == 0
