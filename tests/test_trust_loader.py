"""The loader against caches built to break it, on toy caches built on the fake sm_90 GPU (FACTS.md §2): whatever the
dir holds, install() and the vLLM plugin return (or, strict, raise a typed error) and never point Triton at a refused
dir; group members are checked by their literal path; owners are checked; the server reads a private copy of the
bytes it checked."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import test_integrity
from helpers import TESTS, run_cli
from test_integrity import checked, copy_of, flip, rel_of

from autotune_cache.cache import integrity, signing, trust
from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.cache.files import sha256_file
from autotune_cache.cache.layout import read_group
from autotune_cache.cache.manifest import FileRecord
from autotune_cache.errors import IntegrityError, SharedWritableError
from autotune_cache.serve import dirs, loader

TOKENS = "1,1025,3000"   # NB 1, 2, 3: every key of the build
OTHER_UID = 12345
keys = test_integrity.keys   # the signing keys fixture


@pytest.fixture(scope="module")
def cache(tmp_path_factory, toy_caches):
    """A toy cache (3 keys, 9 compiled configs). Never modified by tests: each works on copy_of() it."""
    return toy_caches.copy(tmp_path_factory.mktemp("trust-loader") / "cache")


def clean_env(**extra):
    """This process's env without what an install() here or the caller's shell may have set, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOTUNE_CACHE_", "TRITON_CACHE_"))}
    return {**env, **extra}


def probe(cache_dir, tmp_path, *args, env=None, timeout=90):
    """install_probe.py in a fresh process with its own temp dir; it must exit 0 in time (no hang, no traceback)."""
    tmp = tmp_path / f"tmp{len(list(tmp_path.glob('tmp*')))}"
    tmp.mkdir()
    proc = subprocess.run([sys.executable, str(TESTS / "install_probe.py"), str(cache_dir), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env=clean_env(TMPDIR=str(tmp), **(env or {})))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_refused_and_not_pointed(out, *words):
    """Non-strict: refused for one-line reasons naming `words`, Triton pointed at the empty private dir only, and
    no copy left behind."""
    r = out["report"]
    assert out["error"] is None and r["refused"] and not r["verified"], out
    assert all("\n" not in text for text in r["refused"])
    assert all(any(w in text for text in r["refused"]) for w in words), r["refused"]
    assert out["env"] == {"TRITON_CACHE_DIR": r["private_dir"], "TRITON_CACHE_MANAGER": None,
                          "AUTOTUNE_CACHE_BASE": None}
    assert r.get("copy_dir") is None and not [n for n in out["tmp"] if n.startswith("autotune-cache-copy-")]


def assert_strict_error(out, error, *words):
    assert out["error"] and out["error"].startswith(f"{error}: "), out
    assert all(w in out["error"] for w in words), out["error"]
    assert out["env"]["TRITON_CACHE_DIR"] is None and out["env"]["AUTOTUNE_CACHE_BASE"] is None


def revouch(c, rel):
    """Whoever can write the dir rewrote `rel`: its manifest record follows (an unsigned check is fooled by that)."""
    m = manifest_mod.load(c)
    path = c / rel
    m.files[rel] = FileRecord(size=path.stat().st_size,
                              sha256=sha256_file(path) if path.stat().st_size < 1 << 30 else "0" * 64)
    manifest_mod.save(m, c)


# -- 1. nothing in the dir hangs or crashes the server ------------------------------------------------------------
def _fifo(m):
    m.unlink()
    os.mkfifo(m)


def _directory(m):
    m.unlink()
    m.mkdir()


def _not_utf8(m):
    data = m.read_bytes()
    m.write_bytes(data[:40] + b"\xff" + data[40:])


def _deep(m):
    m.write_text("[" * 100_000 + "]" * 100_000)


def _huge(m):
    with open(m, "r+b") as f:
        f.truncate(1 << 40)   # sparse: a terabyte that takes no disk


@pytest.mark.parametrize("damage", [_fifo, _directory, _not_utf8, _deep, _huge],
                         ids=["fifo", "directory", "not-utf8", "deep", "huge"])
def test_any_manifest_is_refused_in_seconds_never_raised(cache, tmp_path, damage):
    c = copy_of(cache, tmp_path / "c")
    damage(c / manifest_mod.MANIFEST_NAME)
    assert_refused_and_not_pointed(probe(c, tmp_path), "manifest.json")
    assert_strict_error(probe(c, tmp_path, "--strict"), "IntegrityError", "manifest.json", "strict mode")


def test_the_vllm_plugin_never_kills_the_server(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    _fifo(c / manifest_mod.MANIFEST_NAME)
    assert_refused_and_not_pointed(probe(c, tmp_path, "--plugin"), "manifest.json")
    assert_strict_error(probe(c, tmp_path, "--plugin", "--strict"), "IntegrityError", "manifest.json")
    # no such dir: the server starts without the cache (strict: a typed error)
    out = probe(tmp_path / "nope", tmp_path, "--plugin")
    assert out["error"] is None and out["report"] is None and out["env"]["TRITON_CACHE_DIR"] is None
    assert_strict_error(probe(tmp_path / "nope", tmp_path, "--plugin", "--strict"), "CacheDirError", "nope")


def _group_deep(path):
    path.write_text('{"child_paths": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _group_not_utf8(path):
    path.write_bytes(path.read_bytes().replace(b'"child_paths"', b'"child_paths\xff"', 1))


def _group_huge(path):
    with open(path, "r+b") as f:
        f.truncate(1 << 40)


@pytest.mark.parametrize("damage, kind", [(_group_deep, "corrupt"), (_group_not_utf8, "corrupt"),
                                          (_group_huge, "too large")], ids=["deep", "not-utf8", "huge"])
def test_a_group_file_the_manifest_vouches_for_cannot_crash_the_check(cache, tmp_path, damage, kind):
    # Triton's own get_group would raise on it and fail the kernel call: the dir is refused instead
    c = copy_of(cache, tmp_path / "c")
    rel = next(c.glob("*/__grp__*.json")).relative_to(c).as_posix()
    damage(c / rel)
    revouch(c, rel)
    t = trust.assess(c, trust.Policy(require_manifest=True))
    assert [(p.path, p.kind) for p in t.files.problems] == [(rel, kind)] and not t.trusted


def test_special_files_where_the_signature_and_groups_are_read(cache, tmp_path, keys):
    key, pub = keys["ours"]
    c = copy_of(cache, tmp_path / "c")
    run_cli("sign", c, "--key", key, check=0)
    group = next(c.glob("*/__grp__*.json"))
    group.unlink()
    os.mkfifo(group)   # the signature check reads every group file: a fifo must not block it
    assert_refused_and_not_pointed(probe(c, tmp_path, "--public-key", pub), "special file", "unreadable group file")
    c2 = copy_of(cache, tmp_path / "c2")
    os.mkfifo(c2 / manifest_mod.SIG_NAME)
    assert_refused_and_not_pointed(probe(c2, tmp_path, "--public-key", pub), "manifest.sig: unreadable signature")
    (c2 / manifest_mod.SIG_NAME).unlink()
    (c2 / manifest_mod.SIG_NAME).write_text("[" * 100_000 + "]" * 100_000)
    assert_strict_error(probe(c2, tmp_path, "--public-key", pub, "--strict"), "IntegrityError", "unreadable signature")


def test_a_deeply_nested_autotune_file_is_a_miss_not_a_crash(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    rel = rel_of(c, "autotune")
    (c / rel).write_text('{"key": ' + "[" * 100_000 + "]" * 100_000 + "}")
    revouch(c, rel)   # vouched for: the check passes it, Triton must not crash on it
    proc = subprocess.run([sys.executable, str(TESTS / "serve_with_loader.py"), str(c), "before", TOKENS],
                          capture_output=True, text=True, timeout=300, env=clean_env(TMPDIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is None and out["report"]["verified"] and out["configs_benchmarked"] == 3   # one key re-tuned


def test_a_crafted_file_name_stays_on_one_line(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    (c / os.fsdecode(b"evil\xff\nrefused: nothing")).write_bytes(b"x")
    (text,) = [r.text for r in trust.assess(c).refusals]
    assert text == "evil\\udcff\\nrefused: nothing: not listed in the manifest (foreign file)"


def test_a_check_that_fails_unforeseen_refuses_in_one_line(cache, tmp_path, monkeypatch):
    c = copy_of(cache, tmp_path / "c")

    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(integrity, "check_files", boom)
    r = checked(c)
    assert r.refused == [f"{c}: cannot be checked (RuntimeError: boom)"] and r.private_dir is not None
    with pytest.raises(IntegrityError, match="cannot be checked"):
        checked(c, strict=True)


# -- 2. a public key implies a manifest --------------------------------------------------------------------------
def test_a_public_key_without_manifest_serves_nothing(cache, tmp_path, keys):
    key, pub = keys["ours"]
    c = copy_of(cache, tmp_path / "c")
    run_cli("sign", c, "--key", key, check=0)
    (c / manifest_mod.MANIFEST_NAME).unlink()
    (c / manifest_mod.SIG_NAME).unlink()
    flip(c / rel_of(c, "cubin"))
    assert_refused_and_not_pointed(probe(c, tmp_path, "--public-key", pub), "no manifest, and one is required")
    assert_refused_and_not_pointed(probe(c, tmp_path, env={"AUTOTUNE_CACHE_PUBLIC_KEY": str(pub)}),
                                   "no manifest, and one is required")


# -- 3. group members by literal path ----------------------------------------------------------------------------
def test_stray_members_compares_paths_as_written():
    own = "/srv/c/AB"
    assert integrity.stray_members({"k.cubin": "/srv/c/AB/k.cubin", "k.json": "/srv/c/AB/k.json"}, own) == []
    for name, path in (("k.cubin", "/tmp/link/AB/k.cubin"),      # a link that resolves back inside
                       ("k.cubin", "/srv/c/AB/../AB/k.cubin"),   # `..` that stays inside
                       ("k.cubin", "/srv/c/AB/other.cubin"),     # another member's bytes under this name
                       ("../k.cubin", "/srv/c/AB/../k.cubin"),   # a name that is a path
                       ("k.cubin", "/srv/c/AB//k.cubin")):
        assert integrity.stray_members({name: path}, own) == [path]


def test_group_members_through_a_link_are_neither_signed_nor_loaded(cache, tmp_path, keys, monkeypatch):
    from autotune_cache.serve.layered import LayeredCacheManager
    key, pub = keys["ours"]
    c = copy_of(cache, tmp_path / "c")
    run_cli("sign", c, "--key", key, check=0)
    link = tmp_path / "link"
    link.symlink_to(c)   # outside the dir, resolving back into it: whoever owns it can re-point it later
    group = next(c.glob("*/__grp__*.json"))
    rel, hash_dir = group.relative_to(c).as_posix(), group.parent.name
    paths = read_group(group)
    group.write_text(json.dumps({"child_paths": {n: str(link / hash_dir / n) for n in paths}}))
    revouch(c, rel)
    # unsigned: the files match the manifest, the group is never followed (its kernel is compiled)
    t = trust.assess(c, trust.Policy(require_manifest=True))
    assert t.trusted and rel in t.files.moved_groups
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "overlay"))
    monkeypatch.setenv("AUTOTUNE_CACHE_BASE", str(c))
    assert LayeredCacheManager(hash_dir).get_group(group.name.removeprefix("__grp__")) is None
    # signed: the names still match what was signed, the paths do not: refused
    t = trust.assess(c, trust.Policy(public_key=str(pub)))
    assert not t.trusted and t.of("signature")[0].text.startswith(f"{rel}: lists {link}/")
    assert_refused_and_not_pointed(probe(c, tmp_path, "--public-key", pub), "outside its directory")
    with pytest.raises(IntegrityError, match="outside its directory"):
        signing.check(c, manifest_mod.load(c), str(pub))


# -- 4. owners and modes -----------------------------------------------------------------------------------------
def _chown_cubin(c):
    rel = rel_of(c, "cubin")
    os.chown(c / rel, OTHER_UID, -1)
    return f"{c}/{rel} (owned by uid {OTHER_UID}, not this user ({os.getuid()}) or root)"


def _chown_manifest(c):
    os.chown(c / manifest_mod.MANIFEST_NAME, OTHER_UID, -1)
    return f"{c}/manifest.json (owned by uid {OTHER_UID}"


def _chown_dir(c):
    os.chown(c, OTHER_UID, -1)
    return f"{c} (owned by uid {OTHER_UID}"


def _chown_parent(c):
    os.chown(c.parent, OTHER_UID, -1)
    return f"{c.parent} (owned by uid {OTHER_UID}"


def _group_writable_manifest(c):
    (c / manifest_mod.MANIFEST_NAME).chmod(0o664)
    return f"{c}/manifest.json (-rw-rw-r--: writable by group)"


@pytest.mark.parametrize("damage", [_chown_cubin, _chown_manifest, _chown_dir, _chown_parent,
                                    _group_writable_manifest],
                         ids=["cubin-owner", "manifest-owner", "dir-owner", "parent-owner", "manifest-g+w"])
def test_entries_and_parents_another_user_owns_or_can_write_are_refused(cache, tmp_path, damage):
    (tmp_path / "p").mkdir()
    c = copy_of(cache, tmp_path / "p" / "c")
    reason = damage(c)
    r = checked(c)
    assert len(r.refused) == 1 and r.refused[0].startswith(reason), r.refused
    assert ("chown it to uid" in r.refused[0]) == ("owned by" in reason)
    assert "other users can change what the server loads" in r.refused[0]
    with pytest.raises(SharedWritableError):
        checked(c, strict=True)
    assert checked(c, allow_shared_writable=True).verified   # allowed explicitly, as a writable dir is


def test_verify_fails_on_a_group_writable_manifest(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    reason = _group_writable_manifest(c)
    proc = run_cli("verify", c)
    assert proc.returncode == 1 and "permissions: FAIL" in proc.stdout and reason in proc.stdout


# -- 5. the server reads a private copy of the bytes it checked ------------------------------------------------
def test_the_copy_is_private_complete_and_relocated(cache, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir(mode=0o700)
    t = trust.assess(cache, trust.Policy(require_manifest=True), copy_to=copy)
    m = t.manifest
    assert t.verified and t.files.copy.error is None and t.files.copy.files == len(m.files)
    on_disk = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()}
    assert on_disk == set(m.files)
    for rel in on_disk:
        assert stat.S_IMODE((copy / rel).stat().st_mode) == 0o600
        assert stat.S_IMODE((copy / rel).parent.stat().st_mode) == 0o700
        if "__grp__" in rel:   # members point into the copy, each at its own dir
            assert integrity.stray_members(read_group(copy / rel), copy / Path(rel).parent) == []
        else:
            assert sha256_file(copy / rel) == m.files[rel].sha256


def test_a_copy_that_fails_serves_the_checked_dir_with_a_warning(cache, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(dirs, "copy_dir", lambda report: blocker / "copy")   # mkdir fails: not a directory
    report = loader.LoaderReport(cache.resolve(), (), False)
    loader._check_integrity(report, require_manifest=True, allow_shared_writable=False, public_key=None, copy=True)
    assert report.verified and report.copy_dir is None and report.private_dir is None
    assert any(w.startswith("the private copy failed") for w in report.warnings)


def serve_swapped(c, tmp_path, *args):
    proc = subprocess.run([sys.executable, str(TESTS / "serve_swapped.py"), str(c), TOKENS, *args],
                          capture_output=True, text=True, timeout=300, env=clean_env(TMPDIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_swapping_files_after_install_changes_nothing_the_server_loads(cache, tmp_path):
    c = copy_of(cache, tmp_path / "c")
    out = serve_swapped(c, tmp_path)
    r = out["report"]
    assert r["verified"] and r["cache_dir"] == str(c) and r["copy_dir"] and r["copy_seconds"] >= 0
    assert not Path(r["copy_dir"]).exists()   # removed at exit
    # every key hit, every winner loaded from the copy: the garbage and the deleted groups were never seen
    assert r["totals"] == {"lookups": 3, "hits": 3, "misses": 0}
    assert out["configs_benchmarked"] == 0 and out["compiles"] == 0 and out["loaded"] == 3
    # the control, copy=False: the same swap reaches the server (re-tuned, recompiled)
    c2 = copy_of(cache, tmp_path / "c2")
    out = serve_swapped(c2, tmp_path, "--no-copy")
    assert out["report"]["copy_dir"] is None and out["configs_benchmarked"] == 9 and out["compiles"] > 0
