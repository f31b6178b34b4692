"""registry/pull.py at pod start: `ensure --from URL` and the vLLM plugin's AUTOTUNE_CACHE_URL fetch a missing or
stale cache; N processes of one node make one download; an unreachable registry falls back (or fails when
strict). Real caches of the toy kernel, real processes, a real file lock."""
import json
import os
import subprocess
import sys
import time

import pytest
import test_registry
from helpers import run_cli, toy_build
from test_registry import TOY

from autotune_cache.cache import manifest as manifest_mod

caches = test_registry.caches   # its module fixture: the two toy caches

NODE = {"AUTOTUNE_CACHE_GPU_NAME": "H100", "AUTOTUNE_CACHE_ALLOW_EMULATED": "1", "AUTOTUNE_CACHE_STRICT": "0"}
UNREACHABLE = {"FSSPEC_S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
               "AWS_MAX_ATTEMPTS": "1"}


@pytest.fixture(scope="module")
def registry(caches, tmp_path_factory):
    url = (tmp_path_factory.mktemp("reg") / "reg").as_uri()
    run_cli("publish", caches[0], url, "--gpu-type", "H100", check=0)   # TP 1 and 2
    return url


def ensure(cache, *args, env=None):
    return run_cli("ensure", *TOY, "--cache-dir", cache, "--allow-writable", *args, env={**NODE, **(env or {})})


def test_ensure_from_fetches_a_missing_cache(registry, tmp_path):
    cache = tmp_path / "srv" / "gdn"
    proc = ensure(cache, "--tp", "1,2", "--from", registry)
    assert proc.returncode == 0 and "ensure: fetched from" in proc.stderr, proc.stderr + proc.stdout
    assert "the server will hit" in proc.stdout
    again = ensure(cache, "--tp", "1,2", "--from", registry)
    assert again.returncode == 0 and "fetched" not in again.stderr   # fresh: nothing downloaded


def test_ensure_from_replaces_a_stale_cache(registry, tmp_path):
    cache = tmp_path / "gdn"
    toy_build(cache, tp=(1,))   # holds TP 1 only: stale for TP 1,2
    before = manifest_mod.load(cache).digest()
    proc = ensure(cache, "--tp", "1,2", "--from", registry)
    assert proc.returncode == 0 and "fetched" in proc.stderr, proc.stderr
    assert len(manifest_mod.load(cache).units) == 2 and manifest_mod.load(cache).digest() != before
    assert not list(tmp_path.glob(".gdn.stale-*"))


def test_unreachable_registry_falls_back_or_fails_when_strict(tmp_path):
    url = "s3://no-such-bucket/reg"
    proc = ensure(tmp_path / "a", "--tp", "1", "--from", url, "--emulate", env=UNREACHABLE)
    assert proc.returncode == 0, proc.stderr   # built instead, with the reason on stderr
    assert "no cache fetched from s3://no-such-bucket/reg" in proc.stderr and "ensure: fallback" in proc.stderr
    strict = ensure(tmp_path / "b", "--tp", "1", "--from", url, "--emulate",
                    env={**UNREACHABLE, "AUTOTUNE_CACHE_STRICT": "1"})
    lines = strict.stderr.strip().splitlines()
    assert strict.returncode == 2 and "cannot read registry.json" in lines[-1] and "Traceback" not in strict.stderr
    assert not (tmp_path / "b").exists()


WORKER = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO)
time.sleep(max(0, float(sys.argv[1]) - time.time()))
from autotune_cache.registry.pull import pull_for_server
r = pull_for_server(logging.getLogger("w"))
print(json.dumps(r.as_dict()))
"""


def test_tp_workers_of_one_node_make_one_download(registry, tmp_path):
    cache = tmp_path / "gdn"
    env = {**os.environ, **NODE, "AUTOTUNE_CACHE_URL": registry, "AUTOTUNE_CACHE_DIR": str(cache),
           "AUTOTUNE_CACHE_MODEL": "qwen3.5-9b", "AUTOTUNE_CACHE_TP": "2", "AUTOTUNE_CACHE_TARGET": "toy_target",
           "AUTOTUNE_CACHE_MAX_TOKENS": "3000"}
    start = time.time() + 4
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(start)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    actions = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        actions.append(json.loads(out.strip().splitlines()[-1])["action"])
    assert sorted(actions) == ["fetched", "fetched-by-another", "fetched-by-another", "fetched-by-another"]
    assert len(manifest_mod.load(cache).units) == 2


def test_vllm_plugin_fetches_then_installs(registry, tmp_path):
    cache = tmp_path / "gdn"
    code = ("import logging; logging.basicConfig(level=logging.INFO); "
            "from autotune_cache.serve.vllm_plugin import register; register()")
    env = {**os.environ, **NODE, "AUTOTUNE_CACHE_URL": registry, "AUTOTUNE_CACHE_DIR": str(cache),
           "AUTOTUNE_CACHE_MODEL": "qwen3.5-9b", "AUTOTUNE_CACHE_TP": "1", "AUTOTUNE_CACHE_TARGET": "toy_target",
           "AUTOTUNE_CACHE_MAX_TOKENS": "3000", "AUTOTUNE_CACHE_ALLOW_WRITABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "fetched from" in proc.stderr and f"serving GDN kernels from {cache}" in proc.stderr, proc.stderr
    gone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**env, **UNREACHABLE, "AUTOTUNE_CACHE_URL": "s3://no-such-bucket/r",
                               "AUTOTUNE_CACHE_DIR": str(tmp_path / "other")})
    assert gone.returncode == 0 and "no cache fetched from s3://no-such-bucket/r" in gone.stderr, gone.stderr
