"""Serving side (loader.install) in real subprocesses on the fake sm_90 GPU with the toy kernel."""
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import TESTS

from autotune_cache.errors import CacheDirError
from autotune_cache.serve.loader import install

BUILT_TOKENS = "1,1024,1025,2048,3000"   # NB 1, 2, 3: all built


def _drop_root_write_override():
    """Root writes anywhere through CAP_DAC_OVERRIDE: drop it (and its kin) from the bounding set before exec,
    so the server process is bound by file modes like any other user (a read-only image layer)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):   # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:   # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def serve(cache, mode, tokens=BUILT_TOKENS, *extra, env=None, read_only_fs=False):
    kwargs = {}
    if read_only_fs and os.getuid() == 0:
        kwargs["preexec_fn"] = _drop_root_write_override
    proc = subprocess.run([sys.executable, str(TESTS / "serve_with_loader.py"), str(cache), mode, tokens, *extra],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}, **kwargs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cache(toy_caches):
    # world-readable (not under pytest's 0700 tmp) so the read-only test can serve it as another user
    root = Path(tempfile.mkdtemp(prefix="autotune-cache-loader-"))
    root.chmod(0o755)
    toy_caches.copy(root / "cache")
    yield root / "cache"
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("mode", ["before", "after"])
def test_install_flips_autotuners_imported_before_and_after(cache, mode):
    out = serve(cache, mode)
    assert out["cache_results"] is True
    assert out["report"]["flipped"] == ["toy_kernels.toy_scale_kernel"]
    assert out["configs_benchmarked"] == 0 and out["error"] is None


def test_without_install_the_server_benchmarks(cache):
    out = serve(cache, "none")
    assert out["cache_results"] is False and out["configs_benchmarked"] == 9   # 3 keys x 3 configs


def test_hit_counters(cache):
    out = serve(cache, "before", BUILT_TOKENS + ",4000")   # 4000 tokens: NB=4, never built
    c = out["report"]["counters"]["toy_scale_kernel"]
    assert c == {"lookups": 4, "hits": 3, "misses": 1}
    assert out["report"]["totals"] == c and out["configs_benchmarked"] == 3


def test_strict_miss_raises_naming_kernel_and_key(cache):
    out = serve(cache, "before", "5000", "--strict")   # NB=5: never built (each test misses its own NB)
    assert out["error"].startswith("CacheMissError")
    assert "toy_scale_kernel" in out["error"] and "(128, 5, 'torch.bfloat16', 'torch.bfloat16')" in out["error"]
    assert out["configs_benchmarked"] == 0
    assert out["report"]["counters"]["toy_scale_kernel"] == {"lookups": 1, "hits": 0, "misses": 1}


def test_strict_from_env(cache):
    out = serve(cache, "after", "6000", env={"AUTOTUNE_CACHE_STRICT": "1"})
    assert out["error"].startswith("CacheMissError")


def test_fingerprint_mismatch_names_the_variable(cache):
    out = serve(cache, "before", "1", env={"TRITON_DEFAULT_FP_FUSION": "0"})
    (mismatch,) = out["report"]["mismatches"]
    assert "TRITON_DEFAULT_FP_FUSION" in mismatch
    # and the remedy, with the value as Triton reads it (0 -> "false"): the cache was built with it unset
    assert mismatch.endswith(f"rebuild with --triton-env TRITON_DEFAULT_FP_FUSION={_read_as('0')}, or unset "
                             "TRITON_DEFAULT_FP_FUSION in the server"), mismatch
    assert out["at_install"]["mismatches"] == [mismatch]   # env vars are cheap: still found at install
    assert out["configs_benchmarked"] == 3   # the invalidating var really changes every disk key


def test_strict_refuses_an_incompatible_cache(cache):
    proc = subprocess.run([sys.executable, str(TESTS / "serve_with_loader.py"), str(cache), "before", "1", "--strict"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRITON_DEFAULT_FP_FUSION": "0"})
    assert proc.returncode != 0 and "IncompatibleCacheError" in proc.stderr
    assert "TRITON_DEFAULT_FP_FUSION" in proc.stderr
    assert f"rebuild with --triton-env TRITON_DEFAULT_FP_FUSION={_read_as('0')}" in proc.stderr


def _read_only_copy(cache, tmp_root):
    ro = tmp_root / "ro"
    shutil.copytree(cache, ro)
    for path in [ro, *ro.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return ro


@pytest.mark.skipif(sys.platform != "linux", reason="linux capabilities")
def test_read_only_cache_hits_and_a_miss_does_not_raise(cache, tmp_path):
    ro = _read_only_copy(cache, cache.parent)
    overlay = tmp_path / "overlay"
    env = {"AUTOTUNE_CACHE_OVERLAY": str(overlay)}
    files_before = sorted(p.relative_to(ro) for p in ro.rglob("*"))
    out = serve(ro, "before", BUILT_TOKENS + ",7000", env=env, read_only_fs=True)
    assert out["error"] is None
    assert out["report"]["read_only"] is True
    assert out["report"]["counters"]["toy_scale_kernel"] == {"lookups": 4, "hits": 3, "misses": 1}
    assert len(list(overlay.rglob("*.autotune.json"))) == 1   # the miss went to the overlay
    assert sorted(p.relative_to(ro) for p in ro.rglob("*")) == files_before   # nothing written into the base


@pytest.mark.skipif(sys.platform != "linux", reason="linux capabilities")
def test_read_only_cache_without_loader_fails_on_a_miss(cache):
    # the failure the layered overlay prevents (FACTS.md §1): proves the test above can fail
    ro = _read_only_copy(cache, cache.parent / "plain")
    out = serve(ro, "plain", "1,7000", read_only_fs=True)
    assert out["error"] is not None and ("Errno 30" in out["error"] or "Errno 13" in out["error"])


@pytest.mark.one_triton   # the CLI's and the plugin's own logic around install()
def test_install_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOTUNE_CACHE_DIR", raising=False)
    with pytest.raises(CacheDirError, match="AUTOTUNE_CACHE_DIR"):
        install()
    with pytest.raises(CacheDirError, match="does not exist"):
        install(tmp_path / "nope")


@pytest.mark.one_triton   # the CLI's and the plugin's own logic around install()
def test_ensure_builds_what_is_missing_then_only_verifies(tmp_path):
    from helpers import run_cli
    cache = tmp_path / "c"
    args = ("ensure", "--target", "toy_target", "--tp", "1,2", "--max-tokens", "2048", "--cache-dir", cache,
            "--emulate", "--no-progress", "--json")
    first = json.loads(run_cli(*args, check=0).stdout)
    assert first["built"] and first["ok"]
    second = json.loads(run_cli(*args, check=0).stdout)
    assert not second["built"] and second["ok"]
    # damage an entry: ensure rebuilds it
    victim = next(cache.rglob("*.autotune.json"))
    victim.write_text("{}")
    third = json.loads(run_cli(*args, check=0).stdout)
    assert third["built"] and third["ok"]


@pytest.mark.one_triton   # the CLI's and the plugin's own logic around install()
def test_ensure_without_gpu_and_missing_units_exits_2(tmp_path):
    from helpers import run_cli
    proc = run_cli("ensure", "--tp", "1", "--cache-dir", tmp_path / "c", "--no-progress",
                   env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "no GPU to build them" in proc.stderr


@pytest.mark.one_triton   # the CLI's and the plugin's own logic around install()
def test_vllm_plugin_entry_point_installs_without_importing_kernels(cache):
    from importlib.metadata import entry_points
    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "autotune_cache"]
    assert ep.value == "autotune_cache.integrations.vllm_plugin:register"
    code = ("import sys; from autotune_cache.integrations.vllm_plugin import register; register(); "
            "from autotune_cache.serve.loader import report; r = report(); "
            "print(r is not None and str(r.cache_dir), any(m == 'fla' or m.startswith(('fla.', 'vllm.')) "
            "for m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AUTOTUNE_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(cache), "False"]
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "AUTOTUNE_CACHE_DIR"})
    assert off.stdout.split() == ["False", "False"]


@pytest.mark.one_triton   # the CLI's and the plugin's own logic around install()
def test_ensure_refuses_what_the_loader_would_refuse(tmp_path):
    from helpers import run_cli
    cache = tmp_path / "c"
    args = ("ensure", "--target", "toy_target", "--max-tokens", "1024", "--cache-dir", cache, "--emulate",
            "--no-progress", "--json")
    assert json.loads(run_cli(*args, check=0).stdout)["ok"]
    (cache / "foreign.bin").write_bytes(b"x")   # not in the manifest: install() would refuse the dir
    out = json.loads(run_cli(*args, check=1).stdout)
    assert not out["ok"] and any("foreign.bin" in p for p in out["problems"])


def test_install_time_fingerprint_never_queries_the_gpu(monkeypatch):
    # install() runs before vLLM initializes the device: even on a GPU host, fingerprint.here(query_gpu=False) must
    # not reach collect() (torch.cuda, Triton's driver); `verify` and `ensure` (query_gpu=True) do
    from autotune_cache.cache import fingerprint
    from autotune_cache.cache import manifest as manifest_mod
    built = manifest_mod.load(TESTS / "data" / "h200-qwen3.5-9b-cache").fingerprint
    queried = []
    monkeypatch.setattr(fingerprint, "_nvidia_driver", lambda: True)
    monkeypatch.setattr(fingerprint, "collect", lambda emulated=False: queried.append(1) or built)
    here, notes = fingerprint.here(built, query_gpu=False)
    assert queried == [] and here.capability == built.capability and "not queried" in notes[0]
    assert here.triton_key_sha256 == fingerprint._triton_key_sha256() and here.python == platform.python_version()
    assert fingerprint.here(built, query_gpu=True) == (built, []) and queried == [1]


# -- what install() compares, and what it leaves to the first autotune lookup ------------------------------------
def _with_fingerprint(cache, dest, **changes):
    """A copy of `cache` whose manifest's fingerprint has `changes` (None: the field removed, as a manifest written
    before it existed). The fingerprint is no part of trust: the copy is still verified and served."""
    from helpers import relocated_copy
    copy = relocated_copy(cache, dest)
    path = copy / "manifest.json"
    raw = json.loads(path.read_text())
    for field, value in changes.items():
        if value is None:
            raw["fingerprint"].pop(field)
        else:
            raw["fingerprint"][field] = value
    path.write_text(json.dumps(raw))
    return copy


OTHER_KEY = "0" * 64   # the triton_key_sha256 of another wheel of the same Triton version
TRITON_BUILD = "triton build: same version but a different triton wheel (triton_key differs)"


def test_install_runs_neither_triton_key_nor_ptxas_and_the_first_lookup_each_once(cache):
    out = serve(cache, "before", "1,2048")
    assert out["at_install"] == {"mismatches": [], "keys_deferred": True, "triton_key": 0, "ptxas": 0}
    assert out["after"] == {"triton_key": 1, "ptxas": 1}   # the check and Triton's own lookup share both
    assert out["report"]["mismatches"] == [] and out["report"]["keys_deferred"] is False
    assert out["report"]["counters"]["toy_scale_kernel"] == {"lookups": 2, "hits": 2, "misses": 0}


def test_another_wheel_with_the_same_file_sizes_is_found_at_the_first_lookup(cache, tmp_path):
    # triton_files equal (this install's), triton_key not: only the deferred comparison can tell
    other = _with_fingerprint(cache, tmp_path / "c", triton_key_sha256=OTHER_KEY)
    out = serve(other, "before", "1")
    assert out["at_install"]["mismatches"] == [] and out["at_install"]["keys_deferred"]
    assert out["report"]["mismatches"] == [TRITON_BUILD]
    assert out["error"] is None   # not strict: reported, the server goes on (as the same mismatch at install did)


def test_strict_another_wheel_fails_the_first_lookup_before_it_reads_and_every_later_one(cache, tmp_path):
    other = _with_fingerprint(cache, tmp_path / "c", triton_key_sha256=OTHER_KEY)
    code = ("import json, sys, autotune_cache\n"
            "from autotune_cache.builder import emulation\n"
            "emulation.fake_gpu()\n"
            "r = autotune_cache.install(sys.argv[1], targets=(), modules=('toy_kernels',), strict=True)\n"
            "import toy_kernels\n"
            "from autotune_cache.shapes import preset\n"
            "errors = []\n"
            "for t in (1, 1, 2048):\n"
            "    try:\n"
            "        toy_kernels.run(preset('qwen3.5-9b').per_rank(1), {'act': 'bfloat16'}, t, 'cpu')\n"
            "        errors.append(None)\n"
            "    except Exception as e:\n"
            "        errors.append(f'{type(e).__name__}: {e}')\n"
            "print(json.dumps({'errors': errors, 'report': r.as_dict(), 'benchmarked': emulation.bench_calls}))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(other)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(e.startswith("IncompatibleCacheError") and "first autotune lookup" in e and "triton_key differs" in e
               for e in out["errors"]), out["errors"]
    # raised before the disk was read: no lookup counted, no hit, nothing benchmarked
    assert out["report"]["totals"] == {"lookups": 0, "hits": 0, "misses": 0} and out["benchmarked"] == 0


def test_another_ptxas_is_found_at_the_first_lookup(cache, tmp_path):
    built = json.loads((cache / "manifest.json").read_text())["fingerprint"]["backend_hash"]
    other = _with_fingerprint(cache, tmp_path / "c", backend_hash=built.replace("Build cuda_", "Build cuda_0"))
    out = serve(other, "before", "1")
    assert out["at_install"]["mismatches"] == []
    assert out["report"]["mismatches"] == ["ptxas build differs (backend hash)"]
    proc = subprocess.run([sys.executable, str(TESTS / "serve_with_loader.py"), str(other), "before", "1", "--strict"],
                          capture_output=True, text=True, timeout=300)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"].startswith("IncompatibleCacheError") and "ptxas build differs" in out["error"]
    assert out["configs_benchmarked"] == 0 and out["report"]["totals"]["hits"] == 0


def test_files_of_other_sizes_are_another_wheel_at_install(cache, tmp_path):
    other = _with_fingerprint(cache, tmp_path / "c", triton_files="1:" + "0" * 64)
    out = serve(other, "before", "1")
    assert out["at_install"]["mismatches"] == [TRITON_BUILD]
    assert out["at_install"]["triton_key"] == 0   # told apart without hashing libtriton
    proc = subprocess.run([sys.executable, str(TESTS / "serve_with_loader.py"), str(other), "before", "1", "--strict"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "IncompatibleCacheError" in proc.stderr and "at install" in proc.stderr
    # a value of another definition proves nothing: not compared
    out = serve(_with_fingerprint(cache, tmp_path / "d", triton_files="2:" + "0" * 64), "before", "1")
    assert out["report"]["mismatches"] == []


def test_a_manifest_without_triton_files_gets_the_full_check_at_install(cache, tmp_path):
    old = _with_fingerprint(cache, tmp_path / "c", triton_files=None, triton_key_sha256=OTHER_KEY)
    out = serve(old, "before", "1")
    assert out["at_install"] == {"mismatches": [TRITON_BUILD], "keys_deferred": False, "triton_key": 1, "ptxas": 1}
    proc = subprocess.run([sys.executable, str(TESTS / "serve_with_loader.py"), str(old), "before", "1", "--strict"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "IncompatibleCacheError" in proc.stderr and "triton_key differs" in proc.stderr


def test_triton_key_files_are_what_triton_key_hashes():
    # triton_files() is a proof of difference only if it lists exactly triton_key()'s files: hash them as it does
    import hashlib

    import triton
    from triton.runtime.cache import triton_key

    from autotune_cache.autotuner import keys
    from autotune_cache.cache import fingerprint
    files = keys.triton_key_files()
    assert triton.__version__ + "-".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in files) == triton_key()
    assert fingerprint.triton_files().startswith("1:")


def test_a_manifest_written_before_triton_files_dumps_as_written():
    # its digest, and so its signature, must not change because this version knows one more field
    from autotune_cache.cache import manifest as manifest_mod
    path = TESTS / "data" / "h200-qwen3.5-9b-cache" / "manifest.json"
    m = manifest_mod.parse(path.read_bytes(), path)
    assert m.fingerprint.triton_files is None
    assert m.fingerprint.model_dump(mode="json") == json.loads(path.read_text())["fingerprint"]
    recorded = m.fingerprint.model_copy(update={"triton_files": "1:ab"})
    assert recorded.model_dump()["triton_files"] == "1:ab"


# -- cache-invalidating env vars (issue 24 item 4): build with the server's, name a mismatch with its remedy --------
FP = "TRITON_DEFAULT_FP_FUSION"


def _triton_reads(env: dict) -> dict:
    """What this Triton itself says the cache-invalidating vars are with `env` set: asked in this process, not
    through the code under test."""
    from unittest import mock

    from triton._C.libtriton import get_cache_invalidating_env_vars
    clean = {k: v for k, v in os.environ.items() if k not in env}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        return dict(get_cache_invalidating_env_vars())


def _read_as(value: str, name: str = FP) -> str:
    return _triton_reads({name: value})[name]


def _without(*names):
    return {k: v for k, v in os.environ.items() if k not in names}


@pytest.fixture(scope="module")
def fp_cache(tmp_path_factory):
    """The one extra toy build: --triton-env FP=1 over a shell with FP=0, and TRITON_F32_DEFAULT= (unset) over a
    shell with it set; compile worker processes on, so their compiled-kernel keys are tested too."""
    from helpers import run_cli
    assert FP in _triton_reads({FP: "1"}) and "TRITON_F32_DEFAULT" in _triton_reads({"TRITON_F32_DEFAULT": "ieee"})
    cache = tmp_path_factory.mktemp("fp") / "c"
    proc = run_cli("build", "--target", "toy_target", "--max-tokens", "1024", "--emulate", "--cache-dir", cache,
                   "--no-progress", "--triton-env", f"{FP}=1", "--triton-env", "TRITON_F32_DEFAULT=", check=0,
                   env={FP: "0", "TRITON_F32_DEFAULT": "ieee", "AUTOTUNE_CACHE_COMPILE_PROCESSES": "2"})
    return cache, proc


def test_a_build_runs_with_triton_env_in_place_of_the_shells(fp_cache):
    from autotune_cache.cache import manifest as manifest_mod
    cache, proc = fp_cache
    m = manifest_mod.load(cache)
    assert m.fingerprint.env == _triton_reads({FP: "1"})   # the flag's value, not the shell's; F32 unset
    (unit,) = m.units.values()
    # the 2 compile workers compiled every config under the same keys as the child (the env is in every compiled
    # kernel's key): the child found them all and compiled none
    assert unit.precompile["workers"] == 2 and unit.precompile["compiled"] == 3 and unit.compiles == 0
    assert f"{FP}={_read_as('1')}" in proc.stdout.splitlines()[-1]   # the summary names what the server needs


def test_a_server_with_the_build_env_hits_and_one_without_misses_naming_the_remedy(fp_cache, monkeypatch):
    cache, _ = fp_cache
    monkeypatch.delenv(FP, raising=False)
    hit = serve(cache, "before", "1", env={FP: "1"})
    assert hit["configs_benchmarked"] == 0 and hit["report"]["mismatches"] == []
    miss = serve(cache, "before", "1")   # FP unset: Triton's own lookup takes another disk key
    assert miss["configs_benchmarked"] == 3
    assert miss["report"]["mismatches"] == [
        f"env {FP}: cache built with {_read_as('1')!r}, here unset (cache-invalidating: every disk key differs) - "
        f"rebuild with --triton-env {FP}= (unset), or set {FP}={_read_as('1')} in the server"]


def test_verify_and_ensure_name_the_remedy_and_ensure_checks_its_triton_env(fp_cache):
    from helpers import cli_here
    cache, _ = fp_cache
    remedy = f"rebuild with --triton-env {FP}= (unset), or set {FP}={_read_as('1')} in the server"
    proc = cli_here("verify", cache, "--allow-emulated", env=_without(FP))
    assert proc.returncode == 1 and remedy in proc.stdout, proc.stdout
    assert cli_here("verify", cache, "--allow-emulated", env={**_without(FP), FP: "1"}).returncode == 0
    ensure = ("ensure", "--target", "toy_target", "--max-tokens", "1024", "--cache-dir", cache, "--allow-emulated",
              "--json")
    out = json.loads(cli_here(*ensure, env=_without(FP)).stdout)
    assert not out["ok"] and not out["built"] and any(remedy in p for p in out["problems"]), out
    # an init container without the server's env: --triton-env says what the server runs with
    out = json.loads(cli_here(*ensure, "--triton-env", f"{FP}=1", env=_without(FP)).stdout)
    assert out["ok"] and not out["built"], out


def test_triton_env_names_triton_does_not_count_and_malformed_items_are_refused(tmp_path):
    from helpers import assert_refused_in_one_line, cli_here

    from autotune_cache.builder import triton_env
    from autotune_cache.errors import SpecError
    build = ("build", "--target", "toy_target", "--max-tokens", "1024", "--emulate", "--cache-dir", tmp_path / "c")
    assert "TRITON_CACHE_AUTOTUNING" not in _triton_reads({"TRITON_CACHE_AUTOTUNING": "1"})
    for item, says in (("TRITON_CACHE_AUTOTUNING=1", "not a cache-invalidating env var of Triton"),
                       (FP, "give NAME=VALUE"), ("1X=1", "not an env var name")):
        assert_refused_in_one_line(cli_here(*build, "--triton-env", item), says)
        assert not (tmp_path / "c").exists()
    # 3.9 counts TRITON_FORCE_DISABLE_FP_FUSION, 3.6 and 3.8 do not: whatever this Triton says decides
    force = "TRITON_FORCE_DISABLE_FP_FUSION"
    if force in _triton_reads({force: "1"}):
        assert triton_env.check({force: "1"})[force] == _read_as("1", force)
    else:
        with pytest.raises(SpecError, match=f"{force}: not a cache-invalidating env var of Triton"):
            triton_env.check({force: "1"})


def test_env_mismatch_lines_and_remedies():
    from helpers import toy_spec

    from autotune_cache.builder.orchestrator import Build
    from autotune_cache.builder.plan import plan
    from autotune_cache.cache.fingerprint import Fingerprint, mismatches
    from autotune_cache.cache.manifest import Manifest
    from autotune_cache.errors import CacheDirError
    base = Fingerprint(python="3.11.7", triton="3.8.0", torch="2.13.0", cuda="13.0", packages={}, gpu_name="H100",
                       capability="9.0", ptxas="12.8", backend_hash="sm90", triton_key_sha256="k", env={})
    fp1 = base.model_copy(update={"env": {FP: "true"}})
    fp0 = base.model_copy(update={"env": {FP: "false"}})
    assert mismatches(base, fp1) == [f"env {FP}: cache built with it unset, here 'true' (cache-invalidating: every "
                                     f"disk key differs) - rebuild with --triton-env {FP}=true, or unset {FP} in the "
                                     "server"]
    assert mismatches(fp0, fp1)[0].endswith(f"rebuild with --triton-env {FP}=true, or set {FP}=false in the server")
    assert mismatches(fp0, fp1, remedies=False) == [
        f"env {FP}: cache built with 'false', here 'true' (cache-invalidating: every disk key differs)"]
    # a build into a dir of another env: the cache's values are the way to build more into it
    b = Build(plan(toy_spec("unused")), Path("unused"), progress=False)
    b.ledger.manifest = Manifest(tool_version="0", fingerprint=fp0)
    with pytest.raises(CacheDirError, match=f"build into a separate directory, or with the cache's env: "
                                            f"--triton-env {FP}=false$"):
        b.ledger.on_hello(fp1)


# -- a key whose configs prune to one (issue 24): Triton 3.8+ looks it up nowhere, 3.6 like any other key -----------
SINGLE = (128, 1, "torch.bfloat16", "torch.bfloat16")   # toy_prune_kernel at NB = 1: one config left


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """toy_prune_target built to 3000 tokens (NB 1, 2, 3 of toy_prune_kernel; NB = 1 prunes to one config): one
    build child. Returns (cache dir, spec, manifest)."""
    from helpers import toy_build, toy_spec
    cache = tmp_path_factory.mktemp("pruned") / "cache"
    return cache, toy_spec(cache, targets=("toy_prune_target",)), toy_build(cache, targets=("toy_prune_target",))


def test_a_key_pruned_to_one_is_reached_and_covered_with_a_file_only_where_triton_looks_it_up(pruned):
    from autotune_cache import plan
    from autotune_cache.autotuner.versions import prunes_to_one_skip_disk
    from autotune_cache.cache.scan import scan
    from autotune_cache.cache.verify import verify
    cache, spec, manifest = pruned
    skip = prunes_to_one_skip_disk()   # 3.8+
    entries = {tuple(e.key) for e in manifest.entries.values()}
    # Triton decides, not the adapter: the NB = 1 file is on disk exactly where the adapter says Triton looks it up
    assert (SINGLE in entries) is (not skip)
    assert len(list(cache.rglob("*.autotune.json"))) == len(manifest.entries) == 3 - skip
    # verify counts no planned key missing: on 3.8+ the NB = 1 key is covered without a file
    s = scan(cache)
    coverage = next(c for c in verify(s, plan(spec)).checks if c.name == "coverage")
    assert coverage.ok, coverage.problems
    assert {tuple(r["key"]): r["status"] for r in coverage.details} == {
        **dict.fromkeys(entries, "present"), **({SINGLE: "pruned to one"} if skip else {})}
    # the one config's compiled kernel is kept by prune as an entry's winner is: one winner per key
    assert sum(c.role == "winner" for c in s.compiled) == 3
    # the build reached every planned key, as an entry or listed as pruned to one (so it warned of none)
    (unit,) = manifest.units.values()
    assert [tuple(p.key) for p in unit.pruned_to_one] == ([SINGLE] if skip else [])
    (planned,) = plan(spec).units
    assert sorted(entries | {tuple(p.key) for p in unit.pruned_to_one}) == sorted(tuple(k.key) for k in planned.keys)


def test_a_key_pruned_to_one_is_no_miss_of_a_strict_server_nor_in_its_misses(pruned, tmp_path):
    cache, _, manifest = pruned
    misses = tmp_path / "misses.jsonl"
    out = serve(cache, "before", "1,1024,2048,3000", "--strict", "--kernels", "toy_prune_kernels", "--misses", misses)
    assert out["error"] is None and out["configs_benchmarked"] == 0
    # a lookup (and a hit) per entry: on 3.8+ the NB = 1 key is none, on 3.6 it is one
    n = len(manifest.entries)
    assert out["report"]["totals"] == {"lookups": n, "hits": n, "misses": 0}
    assert not misses.exists() or misses.read_text() == ""   # no record asks a build for it


@pytest.mark.parametrize("missing", [False, True], ids=["whole", "a-member-missing"])
def test_the_layered_managers_get_group_follows_the_installed_tritons(tmp_path, monkeypatch, missing):
    # Triton 3.8+ reads a group with a member missing as no group (the kernel compiles again), 3.6 as the members
    # that exist: the layered manager over a read-only base answers as Triton's own manager does on that base
    from triton.runtime.cache import FileCacheManager

    from autotune_cache.autotuner.versions import group_needs_every_member
    from autotune_cache.serve.layered import BASE_ENV, LayeredCacheManager
    key, base, overlay = "A" * 52, tmp_path / "base", tmp_path / "overlay"
    (base / key).mkdir(parents=True)
    members = {name: f"{base}/{key}/{name}" for name in ("k.json", "k.cubin")}
    for name, path in members.items():
        Path(path).write_text(name)
    (base / key / "__grp__k.json").write_text(json.dumps({"child_paths": members}))
    if missing:
        (base / key / "k.cubin").unlink()
    monkeypatch.setenv("TRITON_CACHE_DIR", str(base))
    tritons = FileCacheManager(key).get_group("k.json")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(overlay))
    monkeypatch.setenv(BASE_ENV, str(base))
    assert LayeredCacheManager(key).get_group("k.json") == tritons
    whole = {"k.json": members["k.json"]} if missing else members
    assert tritons == (None if missing and group_needs_every_member() else whole)
