"""registry/: publish, ls and fetch through the CLI on real caches of the toy kernel (emulated builds: real Triton
compiles for a fake sm_90 GPU), on file:// and on s3:// against moto's S3 server running in this process (s3fs
speaking HTTP to it: nothing mocked); concurrent publishers as real processes lose no entry."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli, small_cache

from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.cache.bundle import export, import_bundle
from autotune_cache.cache.layout import read_group

TOY = ("--model", "qwen3.5-9b", "--target", "toy_target", "--max-tokens", "3000")


@pytest.fixture(scope="module")
def caches(tmp_path_factory, toy_caches):
    """Two real caches: TP 1+2 (2 units) and TP 1 alone. Never modified by tests."""
    base = tmp_path_factory.mktemp("caches")
    toy_caches.copy(base / "tp12", tp=(1, 2))
    toy_caches.copy(base / "tp1", tp=(1,))
    return base / "tp12", base / "tp1"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server in this process (moto), a bucket, and the env that points s3fs at it (for subprocesses too)."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto's state is global to the process: a module run after another in the same pytest worker would find the
    # last one's bucket and objects; its reset API empties them
    import urllib.request
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=30)
    env = {"FSSPEC_S3_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec.config
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = env["FSSPEC_S3_ENDPOINT_URL"]
    import s3fs
    s3fs.S3FileSystem(endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"]).mkdir("gdn-registry")
    yield env
    fsspec.config.conf["s3"].pop("endpoint_url", None)
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    server.stop()


def ls(url, env=None):
    return json.loads(run_cli("ls", url, "--json", env=env, check=0).stdout)


def fetch(url, dest, *args, env=None, check=None):
    return run_cli("fetch", url, dest, *TOY, *args, env=env, check=check)


def one_line_error(proc, text):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and text in lines[0] and "Traceback" not in proc.stderr, \
        proc.stderr + proc.stdout


@pytest.fixture(params=["file", "s3"])
def registry(request, tmp_path):
    if request.param == "file":
        return (tmp_path / "reg").as_uri(), None
    env = request.getfixturevalue("s3")
    return f"s3://gdn-registry/{tmp_path.name}", env


# -- publish, ls, fetch ---------------------------------------------------------------------------------------
def test_publish_ls_fetch_round_trip(caches, registry, tmp_path):
    url, env = registry
    tp12, _ = caches
    out = json.loads(run_cli("publish", tp12, url, "--model", "qwen3.5-9b", "--gpu-type", "H200", "--json",
                             env=env, check=0).stdout)
    assert not out["already_published"] and out["units"] == 2 and out["tp"] == [1, 2]
    again = json.loads(run_cli("publish", tp12, url, "--gpu-type", "H200", "--json", env=env, check=0).stdout)
    assert again["already_published"] and again["bundle_sha256"] == out["bundle_sha256"]
    (b,) = ls(url, env)["bundles"]
    assert b["gpu_type"] == "H200" and b["model"] == "qwen3.5-9b" and b["emulated"] and b["units"] == 2
    # the table at 80 columns: one block per bundle, its identifying cells first, nothing cut
    table = run_cli("ls", url, env={**(env or {}), "COLUMNS": "80"}, check=0).stdout
    header, *lines = table.splitlines()   # the header holds the URL whole, however long
    assert header.startswith(url) and all(len(line) <= 80 and line == line.rstrip() for line in lines), table
    assert b["bundle_sha256"][:12] in table and "H200" in table and "qwen3.5-9b" in table

    dest = tmp_path / "srv" / "cache"
    got = json.loads(fetch(url, dest, "--tp", "2", "--gpu-name", "H200", "--allow-emulated", "--json",
                           env=env, check=0).stdout)
    assert got["warnings"] == [] and got["bundle_sha256"] == out["bundle_sha256"]
    # relocated: every group file lists its members in the fetched dir, and the plan's keys are all there
    for g in dest.glob("*/__grp__*.json"):
        assert all(Path(p).parent == g.parent for p in read_group(g).values())
    run_cli("verify", dest, *TOY, "--tp", "2", check=0)
    fetched, built = manifest_mod.load(dest), manifest_mod.load(tp12)
    assert fetched.files != built.files and fetched.digest() == built.digest()   # group files rewritten, one digest


def test_fetch_picks_exact_gpu_else_same_capability_with_warning(caches, tmp_path):
    url = (tmp_path / "reg").as_uri()
    tp12, tp1 = caches
    run_cli("publish", tp1, url, "--gpu-type", "H100", check=0)
    run_cli("publish", tp12, url, "--gpu-type", "H200", check=0)
    pick = lambda *a: json.loads(fetch(url, tmp_path / "x", "--tp", "1", "--allow-emulated", "--dry-run", "--json",  # noqa: E731
                                       *a, check=0).stdout)
    assert pick("--gpu-name", "H100")["gpu_type"] == "H100" and pick("--gpu-name", "H100")["warnings"] == []
    assert pick("--gpu-name", "NVIDIA H200")["gpu_type"] == "H200"
    other = pick("--gpu-name", "GH200", "--capability", "9.0")
    assert other["gpu_type"] == "H200" and "no bundle built on GH200" in other["warnings"][0]   # the newest
    one_line_error(fetch(url, tmp_path / "y", "--tp", "1", "--allow-emulated", "--capability", "8.0"),
                   "compute capability 9.0, not 8.0")
    one_line_error(fetch(url, tmp_path / "y", "--tp", "4", "--allow-emulated", "--gpu-name", "H100"),
                   "no bundle holds the 1 planned unit ")
    one_line_error(fetch(url, tmp_path / "y", "--tp", "1", "--gpu-name", "H100",   # conftest allows emulated caches
                         env={"AUTOTUNE_CACHE_ALLOW_EMULATED": "0"}), "an emulated build")
    one_line_error(fetch(url, tmp_path / "y", "--tp", "1", "--allow-emulated", env={"AUTOTUNE_CACHE_GPU_NAME": "",
                                                                                       "CUDA_VISIBLE_DEVICES": ""}),
                   "--gpu-name")
    assert not (tmp_path / "y").exists()


def test_fetch_refuses_a_bundle_whose_disk_keys_differ_here(caches, tmp_path):
    """A bundle built under another cache-invalidating env var (every disk key differs) is never chosen."""
    url = (tmp_path / "reg").as_uri()
    run_cli("publish", caches[1], url, check=0)
    proc = fetch(url, tmp_path / "y", "--tp", "1", "--allow-emulated", "--gpu-name", "H100",
                 env={"TRITON_DEFAULT_FP_FUSION": "0"})
    one_line_error(proc, "TRITON_DEFAULT_FP_FUSION")


def test_damaged_bundle_and_bad_entries(caches, tmp_path):
    reg = tmp_path / "reg"
    run_cli("publish", caches[1], reg.as_uri(), check=0)
    (entry,) = reg.glob("index/*/*/*.json")
    (entry.parent / "bogus.json").write_text('{"format": "nope"}')
    listed = ls(reg.as_uri())
    assert len(listed["bundles"]) == 1 and "not a registry entry" in listed["warnings"][0]
    (bundle,) = reg.glob("bundles/*.tar.gz")
    data = bytearray(bundle.read_bytes())
    data[-100] ^= 1
    bundle.write_bytes(bytes(data))
    one_line_error(fetch(reg.as_uri(), tmp_path / "y", "--tp", "1", "--allow-emulated", "--gpu-name", "H100"),
                   "does not have the sha256")
    assert not (tmp_path / "y").exists() and not list(tmp_path.glob(".y.fetch-*"))


def test_signed_registry_needs_a_key(caches, tmp_path):
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    keys = {}
    for name in ("good", "other"):
        k = ed25519.Ed25519PrivateKey.generate()
        (tmp_path / f"{name}.pem").write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        (tmp_path / f"{name}.pub").write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
        keys[name] = tmp_path / f"{name}.pub"
    signed = tmp_path / "signed"
    export(caches[1], tmp_path / "b.tar.gz")
    import_bundle(tmp_path / "b.tar.gz", signed)   # a copy whose group files point into it
    run_cli("sign", signed, "--key", tmp_path / "good.pem", check=0)
    url = (tmp_path / "reg").as_uri()
    run_cli("publish", signed, url, check=0)
    assert ls(url)["signed"] and ls(url)["bundles"][0]["signed_by"]
    one_line_error(run_cli("publish", caches[0], url), "holds signed bundles only")
    common = ("--tp", "1", "--allow-emulated", "--gpu-name", "H100")
    one_line_error(fetch(url, tmp_path / "a", *common, env={"AUTOTUNE_CACHE_PUBLIC_KEY": ""}), "signed registry")
    one_line_error(fetch(url, tmp_path / "b", *common, "--public-key", keys["other"]), "not signed by this key")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    fetch(url, tmp_path / "c", *common, "--public-key", keys["good"], check=0)
    run_cli("verify", tmp_path / "c", "--public-key", keys["good"], check=0)


def test_ls_and_fetch_where_nothing_was_published_say_so(tmp_path):
    for proc in (run_cli("ls", tmp_path / "none", check=None),
                 fetch(tmp_path / "none", tmp_path / "dest", "--tp", "1", "--gpu-name", "H200")):
        one_line_error(proc, "no registry there")
    assert sorted(p.name for p in tmp_path.iterdir()) == []   # nothing created


def test_unreachable_registry_is_one_line(tmp_path):
    proc = fetch("s3://no-such-bucket/x", tmp_path / "y", "--tp", "1", "--gpu-name", "H100",
                 env={"FSSPEC_S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                      "AWS_SECRET_ACCESS_KEY": "x", "AWS_MAX_ATTEMPTS": "1"})
    one_line_error(proc, "cannot read registry.json")


# -- concurrent publishers ------------------------------------------------------------------------------------
PUBLISHERS = 6


def _variants(cache, base, n):
    """n caches with the same units and fingerprint (one slot) and different files: n different manifests."""
    m = manifest_mod.load(cache)
    out = []
    for i in range(n):
        d = base / f"v{i}"
        v = small_cache(d, {f"extra/file{i}.bin": os.urandom(64)})
        v.fingerprint, v.units = m.fingerprint, m.units
        manifest_mod.save(v, d)
        out.append(d)
    return out


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_concurrent_publishers_lose_no_entry(caches, tmp_path, kind, request):
    env = request.getfixturevalue("s3") if kind == "s3" else None
    url = (tmp_path / "reg").as_uri() if kind == "file" else f"s3://gdn-registry/race-{tmp_path.name}"
    dirs = _variants(caches[1], tmp_path, PUBLISHERS)
    start = time.time() + 4   # every process imports first, then all publish at once
    code = ("import sys, time; from autotune_cache.cli import main; time.sleep(max(0, float(sys.argv[1]) - "
            "time.time())); sys.exit(main(sys.argv[2:]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(start), "publish", str(d), url, "--gpu-type", "H200"],
                              env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for d in dirs]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    bundles = ls(url, env)["bundles"]
    assert len(bundles) == PUBLISHERS and len({b["slot"] for b in bundles}) == 1
    assert len({b["bundle_sha256"] for b in bundles}) == PUBLISHERS
