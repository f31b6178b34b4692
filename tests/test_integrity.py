"""Cache integrity and trust (issue 8) on real toy caches built on the fake sm_90 GPU (FACTS.md §2): `verify`, the
loader and `import` refuse tampered, missing, foreign, linked and shared-writable caches, and a server process
never uses a tampered file."""
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import TESTS, run_cli

from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.cache.bundle import export, import_bundle
from autotune_cache.errors import IntegrityError, SharedWritableError
from autotune_cache.serve.loader import LoaderReport, _check_integrity, install

TOKENS = "1,1024,1025,2048,3000"   # NB 1, 2, 3: every key of the build
SO = "cuda_utils.cpython-311-x86_64-linux-gnu.so"


@pytest.fixture(scope="module")
def cache(tmp_path_factory, toy_caches):
    """A toy cache (3 keys, 9 compiled configs) plus a stand-in for Triton's cuda_utils .so in its own hash dir,
    listed in the manifest like every file: on a GPU host the build leaves the real one there, the fake driver
    compiles none. Never modified by tests."""
    root = toy_caches.copy(tmp_path_factory.mktemp("integrity") / "cache")
    so = root / "SOSTANDIN2LHQ7TNRWVG4UNKCXQPI6HC3F3RFRP5XUBLB4LUSOPA" / SO
    so.parent.mkdir()
    so.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64)
    m = manifest_mod.load(root)
    m.files = manifest_mod.cache_files(root)
    manifest_mod.save(m, root)
    return root


def copy_of(cache, dest):
    """A copy at `dest` as `export` + `import` make it (group files point into it, like the original's)."""
    bundle = dest.parent / f"{dest.name}.tar.gz"
    export(cache, bundle)
    import_bundle(bundle, dest)
    bundle.unlink()
    return dest


def rel_of(cache, kind):
    pattern = {"cubin": "*/*.cubin", "autotune": "*/*.autotune.json", "so": f"*/{SO}"}[kind]
    return sorted(cache.glob(pattern))[0].relative_to(cache).as_posix()


def flip(path):
    """One byte changed. In an autotune JSON a digit of a timing, so the file stays valid JSON that Triton would
    read and act on (another winner); elsewhere a byte in the middle."""
    data = bytearray(path.read_bytes())
    if path.name.endswith(".autotune.json"):
        i = max(i for i, c in enumerate(data) if chr(c).isdigit())
        data[i] = ord("8") if data[i] == ord("9") else ord("9")
    else:
        data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def checked(cache_dir, strict=False, require_manifest=False, allow_shared_writable=False, public_key=None):
    """The loader's check alone (no env var set, no hook installed): what install() decides before pointing Triton."""
    report = LoaderReport(Path(cache_dir).resolve(), (), strict)
    _check_integrity(report, require_manifest=require_manifest, allow_shared_writable=allow_shared_writable,
                     public_key=public_key)
    return report


def serve(cache_dir, mode, tokens=TOKENS, *extra, env=None):
    proc = subprocess.run([sys.executable, str(TESTS / "serve_with_loader.py"), str(cache_dir), mode, tokens, *extra],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def files_of(d):
    return {p.relative_to(d).as_posix(): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}


# -- an intact cache ------------------------------------------------------------------------------------------
def test_intact_cache_is_verified_served_and_never_written(cache, tmp_path):
    before = files_of(cache)
    env = {"AUTOTUNE_CACHE_OVERLAY": str(tmp_path / "overlay")}
    out = serve(cache, "before", TOKENS + ",4000", env=env)   # 4000 tokens: NB=4, never built: one miss
    r = out["report"]
    assert r["verified"] and r["refused"] == [] and r["private_dir"] is None
    assert r["files_checked"] == len(manifest_mod.load(cache).files) == 76 and r["verify_seconds"] < 1
    assert out["configs_benchmarked"] == 3 and r["totals"] == {"lookups": 4, "hits": 3, "misses": 1}
    # the miss went to the overlay: the checked dir is exactly as built, and the next server still trusts it
    assert r["overlay_dir"] == str(tmp_path / "overlay") and len(list((tmp_path / "overlay").rglob("*.autotune.json")))
    assert files_of(cache) == before
    assert serve(cache, "after", "1", env=env)["report"]["verified"]
    text = run_cli("verify", cache, check=0).stdout
    assert "checksums: OK" in text and "76 of 76 files" in text and "0 foreign files" in text
    assert "permissions: OK" in text


# -- a flipped byte -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cubin", "autotune", "so"])
def test_flipped_byte_is_detected_and_never_loaded(cache, tmp_path, kind):
    c = copy_of(cache, tmp_path / "c")
    rel = rel_of(c, kind)
    flip(c / rel)
    proc = run_cli("verify", c)
    assert proc.returncode == 1 and f"{rel}: sha256 differs from the manifest" in proc.stdout
    with pytest.raises(IntegrityError) as e:
        install(c, strict=True, targets=(), modules=("toy_kernels",))
    assert rel in str(e.value) and rel in e.value.files and "strict mode" in str(e.value)
    # a server: the directory is refused as a whole, the server tunes in a private empty dir (every config of the
    # 3 keys benchmarked: nothing was read from the cache, the tampered file included)
    out = serve(c, "before")
    r = out["report"]
    assert not r["verified"] and r["refused"] == [f"{rel}: sha256 differs from the manifest"]
    assert r["private_dir"] and not Path(r["private_dir"]).exists()   # removed at exit
    assert out["configs_benchmarked"] == 9 and out["error"] is None and rel in " ".join(r["warnings"])
    if kind == "autotune":   # the control: Triton alone reads the tampered winners, benchmarks nothing
        assert serve(c, "plain")["configs_benchmarked"] == 0


def test_strict_server_process_fails_naming_the_file(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    rel = rel_of(c, "cubin")
    flip(c / rel)
    proc = subprocess.run([sys.executable, str(TESTS / "serve_with_loader.py"), str(c), "before", "1", "--strict"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "IntegrityError" in proc.stderr and rel in proc.stderr


# -- foreign, missing, linked files ---------------------------------------------------------------------------
def test_foreign_missing_and_linked_files_are_named(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    cubin = rel_of(c, "cubin")
    (c / cubin).unlink()
    foreign = f"{Path(cubin).parent}/extra.so"
    (c / foreign).write_bytes(b"\x7fELF")
    (c / "NEWDIR").mkdir()
    shutil.copy(c / rel_of(c, "autotune"), c / "NEWDIR" / "k.autotune.json")   # a planted winner
    (c / "NEWDIR" / "k.cubin").symlink_to(tmp_path / "elsewhere.cubin")
    os.mkfifo(c / "NEWDIR" / "pipe")
    proc = run_cli("verify", c, "--json")
    assert proc.returncode == 1
    problems = json.loads(proc.stdout)["checks"]["checksums"]["problems"]
    assert f"{cubin}: listed in the manifest, missing on disk" in problems
    assert f"{foreign}: not listed in the manifest (foreign file)" in problems
    assert "NEWDIR/k.autotune.json: not listed in the manifest (foreign file)" in problems
    assert any(p.startswith("NEWDIR/k.cubin: symbolic link") for p in problems)
    assert any(p.startswith("NEWDIR/pipe: special file") for p in problems)
    text = run_cli("verify", c).stdout
    assert "1 of the foreign files are autotune files" in text and "verify failed" in text
    r = checked(c)
    assert {x.split(":")[0] for x in r.refused} == {cubin, foreign, "NEWDIR/k.autotune.json", "NEWDIR/k.cubin",
                                                    "NEWDIR/pipe"}
    assert r.private_dir is not None and not r.verified
    with pytest.raises(IntegrityError) as e:
        checked(c, strict=True)
    assert set(e.value.files) == {x.split(":")[0] for x in r.refused}


def test_own_and_in_flight_files_are_not_foreign(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    d = next(c.glob("*/*.cubin")).parent
    (d / "tmp.pid_123_abc").mkdir()
    (d / "tmp.pid_123_abc" / "k.cubin").write_bytes(b"half")    # Triton's write in flight
    (c / ".manifest.x.tmp").write_text("{")                    # ours, a manifest being saved
    (c / manifest_mod.LOCK_NAME).touch()
    assert checked(c).verified


# -- manifest -------------------------------------------------------------------------------------------------
def test_without_manifest_unchecked_unless_required(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    (c / "manifest.json").unlink()
    r = checked(c)
    assert not r.verified and r.refused == [] and r.private_dir is None
    assert any("no manifest.json" in w and "unchecked" in w for w in r.warnings)
    assert checked(c, require_manifest=True).refused[0].endswith("the files cannot be checked")
    with pytest.raises(IntegrityError, match="no manifest"):
        install(c, strict=True, targets=())


def test_corrupt_manifest_is_refused(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    (c / "manifest.json").write_text("{broken")
    r = checked(c)
    assert r.private_dir is not None and "corrupt manifest" in r.refused[0]


# -- who can write --------------------------------------------------------------------------------------------
def test_shared_writable_dir_is_refused_unless_allowed(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    c.chmod(0o777)
    proc = run_cli("verify", c)
    assert proc.returncode == 1 and "permissions: FAIL" in proc.stdout
    assert f"{c} (drwxrwxrwx: writable by group and others)" in proc.stdout
    assert run_cli("verify", c, "--allow-writable").returncode == 0
    r = checked(c)
    assert len(r.refused) == 1 and r.refused[0].startswith(f"{c} (drwxrwxrwx") and "AUTOTUNE_CACHE_ALLOW_WRITABLE" \
        in r.refused[0]
    with pytest.raises(SharedWritableError):
        checked(c, strict=True)
    assert checked(c, allow_shared_writable=True).verified
    env = {"AUTOTUNE_CACHE_OVERLAY": str(tmp_path / "overlay")}
    assert serve(c, "before", "1", env=env)["report"]["private_dir"] is not None
    out = serve(c, "before", "1", env={**env, "AUTOTUNE_CACHE_ALLOW_WRITABLE": "1"})
    assert out["report"]["verified"] and out["configs_benchmarked"] == 0


def test_group_writable_file_and_parent_without_sticky_bit_are_refused(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    cubin = rel_of(c, "cubin")
    (c / cubin).chmod(0o664)
    assert checked(c).refused[0].startswith(f"{c}/{cubin} (-rw-rw-r--: writable by group)")
    (c / cubin).chmod(0o644)
    shared = tmp_path / "shared"
    shared.mkdir()
    c2 = copy_of(cache, shared / "c")
    shared.chmod(0o777)   # anyone may rename c2 away and put another dir in its place
    r = checked(c2)
    assert r.refused and r.refused[0].startswith(f"{shared} (drwxrwxrwx: writable by group and others, no sticky")
    shared.chmod(0o1777)  # like /tmp: others cannot rename or delete what is not theirs
    assert checked(c2).verified


def test_an_overlay_another_user_could_write_is_not_used(cache, tmp_path):
    from autotune_cache.serve.dirs import overlay_dir as _overlay_dir
    overlay = tmp_path / "ov"
    overlay.mkdir(mode=0o777)
    overlay.chmod(0o777)
    report = LoaderReport(cache, (), False)
    old = os.environ.get("AUTOTUNE_CACHE_OVERLAY")
    os.environ["AUTOTUNE_CACHE_OVERLAY"] = str(overlay)
    try:
        used = _overlay_dir(report, allow_shared_writable=False)
    finally:
        os.environ.pop("AUTOTUNE_CACHE_OVERLAY") if old is None else os.environ.update(AUTOTUNE_CACHE_OVERLAY=old)
    assert used != overlay and (used.stat().st_mode & 0o077) == 0
    assert "not used" in report.warnings[0] and "writable by group and others" in report.warnings[0]


# -- a cache copied without import ------------------------------------------------------------------------------
def test_groups_pointing_outside_are_never_followed(cache, tmp_path, monkeypatch):
    from autotune_cache.serve.layered import LayeredCacheManager
    moved = tmp_path / "moved"
    shutil.copytree(cache, moved)   # cp -r: every group still lists the original's absolute paths
    r = checked(moved)
    assert r.verified and any("9 compiled kernels list their files outside their directory" in w for w in r.warnings)
    key = next(moved.glob("*/__grp__*.json")).parent.name
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "overlay"))
    for base, found in ((cache, True), (moved, False)):
        monkeypatch.setenv("AUTOTUNE_CACHE_BASE", str(base))
        group = LayeredCacheManager(key).get_group("toy_scale_kernel.json")
        assert (group is not None) == found   # moved: the kernel is compiled into the overlay instead
        if found:
            assert all(Path(p).parent == base / key for p in group.values())


# -- bundles --------------------------------------------------------------------------------------------------
def test_import_rejects_changed_and_unlisted_members_writing_nothing(cache, tmp_path):
    bundle = tmp_path / "b.tar.gz"
    export(cache, bundle)
    cubin = rel_of(cache, "cubin")
    flipped, extra = tmp_path / "flipped.tar.gz", tmp_path / "extra.tar.gz"
    with tarfile.open(bundle) as src, tarfile.open(flipped, "w:gz") as a, tarfile.open(extra, "w:gz") as b:
        for ti in src.getmembers():
            data = src.extractfile(ti).read() if ti.isfile() else None
            b.addfile(ti, io.BytesIO(data) if data is not None else None)
            if ti.name == cubin:   # one bit of a cubin changed, its manifest record (and the digest) left alone
                data = data[:10] + bytes([data[10] ^ 1]) + data[11:]
            a.addfile(ti, io.BytesIO(data) if data is not None else None)
        evil = tarfile.TarInfo(str(Path(cubin).parent / "evil.so"))   # a file the manifest does not list
        evil.size = 4
        b.addfile(evil, io.BytesIO(b"\x7fELF"))
    before = sorted(p.name for p in tmp_path.iterdir())
    for bad, msg in ((flipped, f"{cubin} differs from its manifest"), (extra, "files its manifest does not list")):
        proc = run_cli("import", bad, tmp_path / "dst")
        assert proc.returncode == 2 and msg in proc.stderr, proc.stderr
        assert not (tmp_path / "dst").exists() and sorted(p.name for p in tmp_path.iterdir()) == before


# -- signatures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("ours", "theirs"):
        key = ed25519.Ed25519PrivateKey.generate()
        (d / f"{name}.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        (d / f"{name}.pub.pem").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        out[name] = (d / f"{name}.pem", d / f"{name}.pub.pem")
    return out


def test_signed_cache_checked_by_verify_and_loader(cache, tmp_path, keys):
    key, pub = keys["ours"]
    _, other = keys["theirs"]
    c = copy_of(cache, tmp_path / "c")
    text = run_cli("sign", c, "--key", key, check=0).stdout
    assert "manifest.sig" in text and (c / "manifest.sig").is_file()
    assert "signature: OK" in run_cli("verify", c, "--public-key", pub, check=0).stdout
    proc = run_cli("verify", c, "--public-key", other)
    assert proc.returncode == 1 and "not signed by this key" in proc.stdout
    r = checked(c, public_key=str(pub))
    assert r.verified and r.signed is True
    r = checked(c, public_key=str(other))
    assert not r.verified and r.signed is False and "manifest.sig: the signature does not verify" in r.refused[0]
    # someone who can write the dir changes a cubin AND its manifest record: checksums pass, the signature does not
    rel = rel_of(c, "cubin")
    flip(c / rel)
    m = manifest_mod.load(c)
    m.files[rel] = manifest_mod.cache_files(c)[rel]
    manifest_mod.save(m, c)
    assert checked(c).verified   # unsigned check: fooled, as the threat model says
    proc = run_cli("verify", c, "--public-key", pub)
    assert proc.returncode == 1 and "checksums: OK" in proc.stdout and "changed since it was signed" in proc.stdout
    with pytest.raises(IntegrityError, match="changed since it was signed"):
        checked(c, strict=True, public_key=str(pub))
    # and `sign` never blesses a directory whose files do not match its manifest
    flip(c / rel)
    proc = run_cli("sign", c, "--key", key)
    assert proc.returncode == 2 and f"{rel}" in proc.stderr and "not signed" in proc.stderr


def test_signature_survives_export_import_and_import_checks_it(cache, tmp_path, keys):
    key, pub = keys["ours"]
    _, other = keys["theirs"]
    c = copy_of(cache, tmp_path / "c")
    run_cli("sign", c, "--key", key, check=0)
    bundle = tmp_path / "signed.tar.gz"
    run_cli("export", c, bundle, check=0)
    assert "signature checked" in run_cli("import", bundle, tmp_path / "dst", "--public-key", pub, check=0).stdout
    # the group files were rewritten for the new path: the signature covers what import may not change
    assert checked(tmp_path / "dst", public_key=str(pub)).signed is True
    proc = run_cli("import", bundle, tmp_path / "dst2", "--public-key", other)
    assert proc.returncode == 2 and "not signed by this key" in proc.stderr and not (tmp_path / "dst2").exists()
    unsigned = tmp_path / "unsigned.tar.gz"
    export(cache, unsigned)
    proc = run_cli("import", unsigned, tmp_path / "dst3", "--public-key", pub)
    assert proc.returncode == 2 and "no signature" in proc.stderr and not (tmp_path / "dst3").exists()


# -- one decision: install(), `verify` and `ensure` refuse the same dirs, naming the same reason ------------------
@pytest.fixture
def undo_install(monkeypatch):
    """Undo what an install() in this process sets: Triton's env vars and the process's report."""
    from autotune_cache.serve import loader
    for var in ("TRITON_CACHE_DIR", "TRITON_CACHE_MANAGER", "AUTOTUNE_CACHE_BASE"):
        monkeypatch.setenv(var, "")   # monkeypatch restores only what it saw: an unset var is unset again after
        monkeypatch.delenv(var)
    monkeypatch.setitem(loader._state, "report", None)


def _changed(c, keys):
    rel = rel_of(c, "cubin")
    flip(c / rel)
    return f"{rel}: sha256 differs from the manifest", {}


def _foreign(c, keys):
    rel = f"{Path(rel_of(c, 'cubin')).parent}/extra.so"
    (c / rel).write_bytes(b"\x7fELF")
    return f"{rel}: not listed in the manifest (foreign file)", {}


def _no_manifest(c, keys):
    (c / manifest_mod.MANIFEST_NAME).unlink()
    return f"{c / manifest_mod.MANIFEST_NAME}: no manifest, and one is required", {"require_manifest": True}


def _group_writable(c, keys):
    c.chmod(0o775)
    return f"{c} (drwxrwxr-x: writable by group): other users can change what the server loads", {}


def _bad_signature(c, keys):
    run_cli("sign", c, "--key", keys["theirs"][0], check=0)
    return "manifest.sig: the signature does not verify: not signed by this key", {"public_key": str(keys["ours"][1])}


@pytest.mark.parametrize("damage", [None, _changed, _foreign, _no_manifest, _group_writable, _bad_signature],
                         ids=["intact", "changed", "foreign", "no-manifest", "group-writable", "bad-signature"])
def test_loader_verify_and_ensure_agree(cache, tmp_path, request, damage, undo_install, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE_OVERLAY", str(tmp_path / "overlay"))
    c = copy_of(cache, tmp_path / "c")
    keys = request.getfixturevalue("keys") if damage is _bad_signature else None
    reason, policy = damage(c, keys) if damage else (None, {})
    report = install(c, strict=False, targets=(), **policy)
    key_args = ("--public-key", policy["public_key"]) if "public_key" in policy else ()
    verified = run_cli("verify", c, "--json", *key_args)
    problems = [p for check in json.loads(verified.stdout)["checks"].values() for p in check["problems"]]
    if reason is None:
        assert report.verified and verified.returncode == 0 and problems == []
    else:
        assert not report.verified and report.private_dir is not None
        assert verified.returncode == 1
        assert any(reason in r for r in report.refused) and any(reason in p for p in problems), (report.refused,
                                                                                                problems)
    if damage is _no_manifest:
        return   # ensure builds a missing manifest: what it is for
    ensured = run_cli("ensure", "--model", "qwen3.5-9b", "--target", "toy_target", "--max-tokens", "3000",
                      "--cache-dir", c, "--emulate", "--no-progress", "--json", *key_args)
    out = json.loads(ensured.stdout)
    assert not out["built"]
    if reason is None:
        assert ensured.returncode == 0 and out["ok"], out
    else:
        assert ensured.returncode == 1 and any(reason in p for p in out["problems"]), out
        # the same words: each of the three shows the loader's refusal as it is
        assert {p for p in out["problems"] if reason in p} == {r for r in report.refused if reason in r} \
            == {p for p in problems if reason in p}
