"""registry/ in operation: a GPU named without the GPU (its compute capability from NVIDIA's table), a stalled
endpoint (bounded by the timeout settings), what killed publishes leave (swept), bad options (refused before
anything is created, a JSON error under --json), registry URLs as users write them. On file:// and on s3:// against
moto's S3 server (started as tests/test_registry.py starts it); the stalled endpoint is a socket that accepts and never
answers. One toy cache, built once per run."""
import json
import os
import socket
import subprocess
import sys
import time

import filelock
import pytest
from helpers import run_cli
from test_registry import TOY

from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.registry.select import gpu_type_of

BUCKET = "gdn-registry-ops"


def _fs(env):
    """s3fs on the test's S3 server, from this process."""
    import s3fs
    return s3fs.S3FileSystem(endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"], key=env["AWS_ACCESS_KEY_ID"],
                             secret=env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def s3():
    """An S3 server in this process (moto), as tests/test_registry.py starts one, and the env that points s3fs at it
    (for the CLI subprocesses). moto keeps its buckets across servers of one process: the bucket may be there
    already (test_registry's module ran first), and moto is reset for the modules after this one."""
    import urllib.request
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"FSSPEC_S3_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    fs = _fs(env)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    yield env
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
    server.stop()


@pytest.fixture(scope="module")
def tp1(tmp_path_factory, toy_caches):
    """A real cache (emulated build: the fake GPU is an H100, sm_90), TP 1. Never modified by tests."""
    return toy_caches.copy(tmp_path_factory.mktemp("ops") / "tp1", tp=(1,))


@pytest.fixture(params=["file", "s3"])
def registry(request, tmp_path):
    if request.param == "file":
        return (tmp_path / "reg").as_uri(), {}
    env = request.getfixturevalue("s3")
    return f"s3://{BUCKET}/ops-{tmp_path.name}", env


def cli_json(*args, env=None):
    """A command under --json: (exit code, its JSON on stdout); an error is JSON too."""
    proc = run_cli(*args, "--json", env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def objects(url, env):
    """The registry's object names (nothing: [])."""
    if url.startswith("file://"):
        root = url.removeprefix("file://")
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    fs = _fs(env)
    fs.invalidate_cache()
    base = url.removeprefix("s3://")
    return sorted(p[len(base) + 1:] for p in fs.find(base))


# -- GPU identity ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, gpu_type, capability", [
    ("NVIDIA A100-SXM4-80GB", "A100", "8.0"), ("NVIDIA A100 80GB PCIe", "A100", "8.0"), ("NVIDIA A10", "A10", "8.6"),
    ("NVIDIA A10G", "A10G", "8.6"), ("NVIDIA L4", "L4", "8.9"), ("NVIDIA L40S", "L40S", "8.9"),
    ("NVIDIA H100 80GB HBM3", "H100", "9.0"), ("NVIDIA H200", "H200", "9.0"), ("NVIDIA GH200 480GB", "GH200", "9.0"),
    ("NVIDIA B200", "B200", "10.0"), ("NVIDIA GB200", "GB200", "10.0"), ("NVIDIA GeForce RTX 4090", "RTX4090", "8.9"),
    ("NVIDIA GeForce RTX 5090", "RTX5090", "12.0"), ("NVIDIA GB10", "GB10", "12.1"),
    ("NVIDIA RTX 6000 Ada Generation", "RTX6000-Ada", "8.9"), ("h200", "H200", "9.0"), ("rtx4090", "RTX4090", "8.9"),
])
def test_gpu_table_names_the_capability_of_device_and_type_names(name, gpu_type, capability):
    from autotune_cache.registry import gpus
    found = gpus.lookup(name)
    assert found is not None and (found.type, found.capability) == (gpu_type, capability)
    assert gpu_type_of(name) == gpu_type   # before the table: "NVIDIA GeForce RTX 4090" -> "RTX"


def test_unknown_gpu_is_not_in_the_table():
    from autotune_cache.registry import gpus
    assert gpus.lookup("NVIDIA X9 Pro") is None and gpus.lookup("") is None and gpu_type_of("NVIDIA X9 Pro") == "X9"


def test_fetch_by_gpu_name_filters_by_its_compute_capability(tp1, registry, tmp_path):
    """An sm_90 bundle is never installed for an A100 (8.0) named without --capability; an unknown name needs
    --capability and gets no other GPU's bundle; a fallback between known GPUs of one capability says so."""
    url, env = registry
    run_cli("publish", tp1, url, "--gpu-type", "H100", env=env, check=0)

    def fetch(*args):
        return cli_json("fetch", url, tmp_path / "dest", *TOY, "--tp", "1", "--allow-emulated", "--dry-run", *args,
                        env=env)
    rc, out = fetch("--gpu-name", "A100")
    assert rc == 2 and "compute capability 9.0, not 8.0" in out["error"], out
    rc, out = fetch("--gpu-name", "NVIDIA X9 Pro")
    assert rc == 2 and "--capability" in out["error"], out
    rc, out = fetch("--gpu-name", "NVIDIA X9 Pro", "--capability", "9.0")
    assert rc == 2 and "not in the GPU table" in out["error"], out
    rc, out = fetch("--gpu-name", "A100", "--capability", "9.0")
    assert rc == 2 and "A100 is compute capability 8.0" in out["error"], out
    rc, out = fetch("--gpu-name", "GH200")
    assert rc == 0 and out["gpu_type"] == "H100", out
    (warning,) = out["warnings"]
    assert "no bundle built on GH200" in warning and "both are compute capability 9.0 in NVIDIA's table" in warning
    assert not (tmp_path / "dest").exists()


def test_publish_gpu_type_contradicting_the_cache_is_refused_unless_forced(tp1, registry, tmp_path):
    """A cache built on an H200 (its manifest says so) is not published as an H100 unless --force."""
    import shutil
    url, env = registry
    h200 = tmp_path / "h200"
    shutil.copytree(tp1, h200, symlinks=True)
    m = manifest_mod.load(h200)
    m.fingerprint = m.fingerprint.model_copy(update={"gpu_name": "NVIDIA H200", "emulated": False})
    manifest_mod.save(m, h200)
    rc, out = cli_json("publish", h200, url, "--gpu-type", "H100", env=env)
    assert rc == 2 and "built on NVIDIA H200 (H200)" in out["error"] and "--force" in out["error"], out
    assert objects(url, env) == []   # nothing created, not even registry.json
    rc, out = cli_json("publish", h200, url, env=env)
    assert rc == 0 and out["gpu_type"] == "H200", out
    rc, out = cli_json("publish", h200, url, "--gpu-type", "H100", "--force", env=env)
    assert rc == 0 and out["gpu_type"] == "H100", out


# -- never hang -----------------------------------------------------------------------------------------------
@pytest.fixture
def stalled():
    """An S3 endpoint that accepts connections and never answers (the kernel completes the handshake; no one
    reads): what a stopped server looks like to a client."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield {"FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{sock.getsockname()[1]}", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    sock.close()


def test_a_stalled_endpoint_fails_within_the_timeout(stalled, tmp_path):
    """Read timeout 1 s, one retry: fetch and ls give up in seconds (before: 15 s reads, 5 x 5 tries, minutes)."""
    env = {**stalled, "AUTOTUNE_CACHE_REGISTRY_READ_TIMEOUT": "1", "AUTOTUNE_CACHE_REGISTRY_CONNECT_TIMEOUT": "1",
           "AUTOTUNE_CACHE_REGISTRY_RETRIES": "1"}
    for args in (("ls", "s3://stalled/reg"),
                 ("fetch", "s3://stalled/reg", tmp_path / "dest", *TOY, "--tp", "1", "--gpu-name", "H100")):
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "autotune_cache", *map(str, args)], capture_output=True,
                              text=True, env={**os.environ, **env}, timeout=40)
        took = time.monotonic() - started
        assert proc.returncode == 2 and "cannot read registry.json" in proc.stderr, proc.stderr
        assert "Timeout" in proc.stderr and took < 20, (took, proc.stderr)
    # pod start: ensure --from gives up on the registry as soon, and goes on (here to a build, with no GPU: exit 2)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autotune_cache", "ensure", *TOY, "--tp", "1", "--cache-dir",
                           str(tmp_path / "pod"), "--from", "s3://stalled/reg"], capture_output=True, text=True,
                          env={**os.environ, **env, "AUTOTUNE_CACHE_GPU_NAME": "H100", "AUTOTUNE_CACHE_STRICT": "0"},
                          timeout=60)
    took = time.monotonic() - started
    assert "no cache fetched from s3://stalled/reg" in proc.stderr and "Timeout" in proc.stderr, proc.stderr
    assert took < 40, (took, proc.stderr)


# -- never leak -----------------------------------------------------------------------------------------------
def _stale_staging(tmp):
    """What a killed publish leaves in the staging place: its dir and the lock file nobody holds, an hour old."""
    base = tmp / f"autotune-cache-publish-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    for name in ("killed", "running"):
        (base / name).mkdir()
        (base / name / "bundle.tar.gz").write_bytes(b"x" * 1000)
        (base / f"{name}.lock").touch()
        os.utime(base / f"{name}.lock", (time.time() - 3600,) * 2)
    return base


def _partials(url, env):
    """A half-written object and (on S3) an unfinished multipart upload, as a killed publish leaves them."""
    if url.startswith("file://"):
        path = url.removeprefix("file://") + "/bundles/.abc.tar.gz.x1.tmp"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"half")
        return
    fs = _fs(env)
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    fs.pipe_file(f"{bucket}/{prefix}/bundles/.abc.tar.gz.x1.tmp", b"half")
    fs.call_s3("create_multipart_upload", Bucket=bucket, Key=f"{prefix}/bundles/abc.tar.gz")


def _uploads(url, env):
    if url.startswith("file://"):
        return []
    fs = _fs(env)
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    return [u for u in fs.list_multipart_uploads(bucket) if u["Key"].startswith(prefix + "/")]


# What a sweep with the default age (a day) removes of _partials' young leftovers: nothing; but moto dates every
# multipart upload 2010-11-10 (its response template), so on S3 the upload counts as old.
YOUNG_SWEPT = {"fi": [], "s3": [True]}


def test_publish_sweeps_what_killed_publishes_left(tp1, registry, tmp_path):
    url, env = registry
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    base = _stale_staging(tmp)
    run_cli("publish", tp1, url, "--gpu-type", "H100", env=env, check=0)   # creates the registry
    _partials(url, env)
    with filelock.FileLock(base / "running.lock"):   # a publish at work: its dir is kept
        # young partial objects are kept (a publish may be writing them): the default age is a day
        rc, out = cli_json("publish", tp1, url, "--gpu-type", "H200", env={**env, "TMPDIR": str(tmp)})
        assert rc == 0 and [p["multipart_upload"] for p in out["swept"]] == YOUNG_SWEPT[url[:2]], out
        assert ".abc.tar.gz.x1.tmp" in " ".join(objects(url, env))
        assert sorted(p.name for p in base.iterdir()) == ["running", "running.lock"]   # the killed one's gone
    rc, out = cli_json("publish", tp1, url, "--gpu-type", "A100", "--force", env={
        **env, "TMPDIR": str(tmp), "AUTOTUNE_CACHE_REGISTRY_STALE_AGE": "0"})
    assert rc == 0 and [p["object"] for p in out["swept"]] == ["bundles/.abc.tar.gz.x1.tmp"], out
    assert not any(".tmp" in o for o in objects(url, env)) and _uploads(url, env) == []
    assert not any(p.name == "killed" for p in base.iterdir())


def test_ls_gc_sweeps_stale_partial_objects_and_uploads(tp1, registry):
    url, env = registry
    run_cli("publish", tp1, url, "--gpu-type", "H100", env=env, check=0)
    _partials(url, env)
    rc, out = cli_json("ls", url, "--gc", env=env)
    assert rc == 0 and [p["multipart_upload"] for p in out["swept"]] == YOUNG_SWEPT[url[:2]], out   # young: kept
    assert len(out["bundles"]) == 1
    rc, out = cli_json("ls", url, "--gc", env={**env, "AUTOTUNE_CACHE_REGISTRY_STALE_AGE": "0"})
    assert rc == 0 and [p["object"] for p in out["swept"]] == ["bundles/.abc.tar.gz.x1.tmp"], out
    assert len(out["bundles"]) == 1
    assert not any(".tmp" in o for o in objects(url, env)) and _uploads(url, env) == []


# -- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", [("--gpu-type", "a/b"), ("--gpu-type", "H\x1b[31m200"), ("--model", "q\x1b]0;x\x07"),
                                    ("--gpu-type", "")])
def test_bad_publish_options_create_nothing_and_answer_json(tp1, registry, option):
    url, env = registry
    rc, out = cli_json("publish", tp1, url, *option, env=env)
    assert rc == 2 and out["exit"] == 2 and option[0] in out["error"] and "\x1b" not in out["error"], out
    assert objects(url, env) == []


def test_bad_fetch_options_answer_json(tmp_path):
    for args, text in ((("--capability", "9"), "--capability must look like 9.0"),
                       (("--gpu-name", "H\x1b[2J200"), "--gpu-name: not a GPU name")):
        rc, out = cli_json("fetch", tmp_path / "reg", tmp_path / "dest", *TOY, "--tp", "1", *args)
        assert rc == 2 and text in out["error"] and "\x1b" not in out["error"], out
    assert list(tmp_path.iterdir()) == []


def test_ls_reads_urls_as_written(tp1, tmp_path):
    reg = tmp_path / "reg"
    run_cli("publish", tp1, reg.as_uri(), check=0)
    rc, out = cli_json("ls", f"file:{reg}")   # a file URL without a host: the dir itself
    assert rc == 0 and len(out["bundles"]) == 1, out
    (tmp_path / "empty").mkdir()
    proc = run_cli("ls", tmp_path / "empty", check=0)
    assert proc.stdout.strip() == f"{(tmp_path / 'empty').as_uri()}: 0 bundles", proc.stdout
    assert cli_json("ls", tmp_path / "empty")[1]["bundles"] == []
    rc, out = cli_json("ls", "gs://bucket/reg")   # gcsfs is not installed here
    assert rc == 2 and "gcsfs" in out["error"] and "[s3]" not in out["error"], out
    rc, out = cli_json("ls", "nosuch://bucket/reg")
    assert rc == 2 and "nosuch:// is not a protocol" in out["error"], out
    rc, out = cli_json("ls", "s3:bucket/reg")
    assert rc == 2 and "write s3://bucket/reg" in out["error"], out


# -- ensure --from --------------------------------------------------------------------------------------------
def test_ensure_from_honours_allow_emulated_and_names_the_variable_without_a_gpu(tp1, tmp_path):
    url = (tmp_path / "reg").as_uri()
    run_cli("publish", tp1, url, "--gpu-type", "H100", check=0)
    node = {"AUTOTUNE_CACHE_ALLOW_EMULATED": "0", "AUTOTUNE_CACHE_STRICT": "0", "CUDA_VISIBLE_DEVICES": ""}
    ensure = ("ensure", *TOY, "--tp", "1", "--allow-writable", "--from", url)
    proc = run_cli(*ensure, "--cache-dir", tmp_path / "a", "--allow-emulated",
                   env={**node, "AUTOTUNE_CACHE_GPU_NAME": "H100"})
    assert proc.returncode == 0 and "ensure: fetched from" in proc.stderr, proc.stderr + proc.stdout
    proc = run_cli(*ensure, "--cache-dir", tmp_path / "b", "--allow-emulated",
                   env={**node, "AUTOTUNE_CACHE_GPU_NAME": ""})
    assert "no NVIDIA GPU here" in proc.stderr and "AUTOTUNE_CACHE_GPU_NAME=H200" in proc.stderr, proc.stderr
