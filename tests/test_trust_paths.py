"""A cache is attacker input: paths in a manifest stay inside the cache dir, manifest.json never hangs or crashes a
reader, a bundle is checked before a byte of it is written, the lock never follows a link, a build lists only what
it wrote, and what our commands write has explicit modes whatever the umask."""
import contextlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading

import pytest
from helpers import (
    assert_refused_in_one_line,
    listing,
    raw_manifest_with,
    run_cli,
    small_cache,
    small_manifest,
    tar_member,
    toy_spec,
    write_bundle,
)

from autotune_cache import build
from autotune_cache.cache import bundle as bundle_mod
from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.cache.bundle import export, import_bundle
from autotune_cache.cache.lock import locked
from autotune_cache.errors import BundleError, CacheDirError

FILES = {"AB/k.autotune.json": b'{"k": 1}', "AB/k.cubin": b"\x7fELF" + bytes(60),
         "CD/__grp__k.json": b'{"child_paths": {}}'}


def write_manifest(cache, raw):
    cache.mkdir(parents=True, exist_ok=True)
    (cache / manifest_mod.MANIFEST_NAME).write_text(json.dumps(raw))


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- 1. paths in a manifest are contained ---------------------------------------------------------------------
def _entry(file):
    return {"kernel": "k", "key": [1], "file": file, "sha256": "0" * 64, "size": 1, "configs": 1, "winner": {},
            "best": 1.0}


@pytest.mark.parametrize("where,bad", [
    ("files", "../x"), ("files", "/etc/passwd"), ("files", "AB/../../x"), ("files", "a//b"), ("files", "./a"),
    ("files", "a/."), ("files", "a\\b"), ("files", "a\x01b"), ("files", "a\nb"), ("files", ""),
    ("files", "manifest.json"), ("entries", "../x"), ("entry.file", "../x"), ("binaries", "../AB"),
    ("unit.entries", "../x"),
])
def test_a_manifest_naming_a_path_outside_or_unnormalized_is_refused_at_load(tmp_path, where, bad):
    raw = raw_manifest_with({})
    if where == "files":
        raw["files"] = {bad: {"size": 1, "sha256": "0" * 64}}
    elif where == "entries":
        raw["entries"] = {bad: _entry(bad)}
    elif where == "entry.file":
        raw["entries"] = {"AB/k.autotune.json": _entry(bad)}
    elif where == "binaries":
        raw["entries"] = {"AB/k.autotune.json": {**_entry("AB/k.autotune.json"), "binaries": [bad]}}
    else:
        raw["units"] = {"u": {"id": "u", "target": "t", "tp": [1], "shape": {}, "dtypes": {}, "tokens": [1],
                              "entries": [bad]}}
    write_manifest(tmp_path, raw)
    with pytest.raises(CacheDirError) as e:
        manifest_mod.load(tmp_path)
    assert "invalid manifest" in str(e.value) and "\n" not in str(e.value)
    assert "Value error, path" in str(e.value), e.value   # refused for its path, nothing else


def test_a_valid_manifest_still_loads_and_round_trips(tmp_path):
    m = small_cache(tmp_path, FILES)
    assert manifest_mod.load(tmp_path).files == m.files


def _outside_listed(tmp_path):
    """A cache dir whose manifest lists ../x, a real file outside it, with another sha256: a build that trusted it
    would delete x as 'damaged'."""
    outside = tmp_path / "x"
    outside.write_bytes(b"precious")
    cache = tmp_path / "c"
    write_manifest(cache, raw_manifest_with({"../x": {"size": 3, "sha256": "0" * 64}}))
    return cache, outside


def test_build_refuses_a_manifest_listing_a_file_outside_and_leaves_it(tmp_path):
    cache, outside = _outside_listed(tmp_path)
    with pytest.raises(CacheDirError, match="leaves the cache dir"):
        build(toy_spec(cache, tp=(1,)), progress=False)
    assert outside.read_bytes() == b"precious"
    proc = run_cli("build", "--target", "toy_target", "--max-tokens", "1024", "--cache-dir", cache, "--emulate",
                   "--no-progress")
    assert_refused_in_one_line(proc, "leaves the cache dir")
    assert outside.read_bytes() == b"precious"


def test_ensure_refuses_a_manifest_listing_a_file_outside_and_leaves_it(tmp_path):
    cache, outside = _outside_listed(tmp_path)
    proc = run_cli("ensure", "--target", "toy_target", "--max-tokens", "1024", "--cache-dir", cache, "--emulate",
                   "--no-progress")
    assert_refused_in_one_line(proc, "leaves the cache dir")
    assert outside.read_bytes() == b"precious"


def test_import_of_a_manifest_listing_paths_outside_creates_nothing_outside(tmp_path):
    raw = raw_manifest_with({"../x": {"size": 1, "sha256": "0" * 64}, "AB/f": {"size": 1, "sha256": "0" * 64}})
    bundle = write_bundle(tmp_path / "evil.tgz", raw, [tar_member("AB/f", b"y")])
    before = listing(tmp_path)
    proc = run_cli("import", bundle, tmp_path / "dst")
    assert_refused_in_one_line(proc, "leaves the cache dir")
    assert listing(tmp_path) == before


# -- 2. manifest.load never hangs or crashes ------------------------------------------------------------------
def _load_in_child(cache):
    """manifest.load in a child with a timeout: a hang fails the test instead of hanging it."""
    code = ("import sys; from autotune_cache.cache import manifest; from autotune_cache.errors import CacheDirError\n"
            "try:\n    manifest.load(sys.argv[1]); print('loaded')\n"
            "except CacheDirError as e:\n    print('refused:', e)")
    proc = subprocess.run([sys.executable, "-c", code, str(cache)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_load_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / manifest_mod.MANIFEST_NAME)
    assert _load_in_child(tmp_path).startswith("refused:") and "a FIFO" in _load_in_child(tmp_path)


def test_load_refuses_a_directory_and_a_link(tmp_path):
    (tmp_path / "d" / manifest_mod.MANIFEST_NAME).mkdir(parents=True)
    with pytest.raises(CacheDirError, match="a directory, not a regular file"):
        manifest_mod.load(tmp_path / "d")
    real = tmp_path / "real"
    small_cache(real, {})
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / manifest_mod.MANIFEST_NAME).symlink_to(real / manifest_mod.MANIFEST_NAME)
    with pytest.raises(CacheDirError, match="a symbolic link"):
        manifest_mod.load(tmp_path / "l")


@pytest.mark.parametrize("data,msg", [
    (b'{"schema_version": 1, "tool_version": "\xff"}', "not UTF-8"),
    (b"[" * 100000 + b"]" * 100000, "nested deeper"),
    (b'{"a":' * 100000 + b"1" + b"}" * 100000, "nested deeper"),
    (b'{"schema_version": 1, "tool_version": "0", "files": []}', "invalid manifest"),
    (b'{"schema_version": 1, "tool_version": "0", "files": {"a": {"size": ' + b"9" * 5000 + b"}}}", "corrupt"),
    (b"", "corrupt manifest"),
])
def test_load_turns_any_bad_content_into_one_cache_dir_error(tmp_path, data, msg):
    (tmp_path / manifest_mod.MANIFEST_NAME).write_bytes(data)
    with pytest.raises(CacheDirError) as e:
        manifest_mod.load(tmp_path)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_load_refuses_a_manifest_over_the_cap_unread(tmp_path):
    with open(tmp_path / manifest_mod.MANIFEST_NAME, "wb") as f:
        f.truncate(manifest_mod.MAX_MANIFEST_BYTES + 1)   # sparse: no disk used
    with pytest.raises(CacheDirError, match="larger than 64 MiB"):
        manifest_mod.load(tmp_path)


# -- 3. a bundle is checked before it is written --------------------------------------------------------------
class _Zeros:
    """A file of `n` zero bytes that takes no memory: a member declared huge compresses a thousandfold."""

    def __init__(self, n):
        self.left = n

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def _zeros_bundle(path, manifest, name, size):
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = {"format": "autotune-cache-bundle", "version": 1, "manifest_digest": manifest.digest()}
        for ti, body in (tar_member("bundle.json", json.dumps(info).encode()),
                         tar_member("manifest.json", manifest.model_dump_json().encode())):
            tar.addfile(ti, io.BytesIO(body))
        ti = tarfile.TarInfo(name)
        ti.size = size
        tar.addfile(ti, _Zeros(size))
    return path


@contextlib.contextmanager
def _largest_file_seen(root):
    """Polls every file under `root` while the block runs; yields a list that holds the largest size seen."""
    seen, stop = [0], threading.Event()

    def poll():
        while not stop.is_set():
            sizes = [s for s in listing(root, vanishing_ok=True).values() if s >= 0]
            seen[0] = max([seen[0], *sizes])
            stop.wait(0.005)
    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join()
        seen[0] = max([seen[0], *(s for s in listing(root).values() if s >= 0)])


BIG = 150 << 20


@pytest.mark.parametrize("name,msg", [("AB/unlisted.bin", "does not list"),
                                      ("AB/k.cubin", "differs from its manifest")])
def test_import_refuses_a_member_before_writing_a_byte_of_it(tmp_path, name, msg):
    bundle = _zeros_bundle(tmp_path / "zeros.tgz", small_manifest(FILES), name, BIG)
    assert bundle.stat().st_size < BIG // 100
    work = tmp_path / "work"
    work.mkdir()
    with _largest_file_seen(work) as seen, pytest.raises(BundleError, match=msg):
        import_bundle(bundle, work / "dst")
    assert seen[0] < 1 << 20 and listing(work) == {}   # nothing of that size, and the target dir it made is gone


def test_import_refuses_a_member_listed_twice_and_leaves_nothing(tmp_path):
    files = {"AB/f": b"one"}
    bundle = write_bundle(tmp_path / "b.tgz", small_manifest(files), [tar_member("AB/f", b"one")] * 2)
    with pytest.raises(BundleError, match="appears twice"):
        import_bundle(bundle, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_import_writes_explicit_modes_whatever_the_umask(tmp_path):
    small_cache(tmp_path / "src", FILES)
    export(tmp_path / "src", tmp_path / "b.tgz")
    with umask(0):
        import_bundle(tmp_path / "b.tgz", tmp_path / "a" / "dst")
    dst = tmp_path / "a" / "dst"
    assert {rel: mode(dst / rel) for rel in [*FILES, "AB", "CD", manifest_mod.MANIFEST_NAME]} == {
        **{rel: 0o644 for rel in FILES}, "AB": 0o755, "CD": 0o755, manifest_mod.MANIFEST_NAME: 0o644}
    assert mode(dst) == mode(dst.parent) == 0o755


def test_manifest_save_writes_0644_whatever_the_umask(tmp_path):
    with umask(0):
        small_cache(tmp_path, {})
    assert mode(tmp_path / manifest_mod.MANIFEST_NAME) == 0o644


# -- 4. the lock --------------------------------------------------------------------------------------------------
def test_a_linked_lock_file_fails_the_command_and_leaves_its_target(tmp_path):
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    target.chmod(0o600)
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / manifest_mod.LOCK_NAME).symlink_to(target)
    with pytest.raises(CacheDirError, match="a link there is never followed"):
        with locked(cache):
            pass
    small_cache(tmp_path / "src", FILES)
    export(tmp_path / "src", tmp_path / "b.tgz")
    assert_refused_in_one_line(run_cli("import", tmp_path / "b.tgz", cache), "cannot take the cache dir's lock")
    assert target.read_bytes() == b"keep me" and mode(target) == 0o600
    assert sorted(p.name for p in cache.iterdir()) == [manifest_mod.LOCK_NAME]   # nothing imported


def test_the_lock_file_is_0644_whatever_the_umask(tmp_path):
    with umask(0), locked(tmp_path):
        pass
    assert mode(tmp_path / manifest_mod.LOCK_NAME) == 0o644


def test_read_only_commands_create_no_lock_file(tmp_path):
    cache = tmp_path / "c"
    small_cache(cache, FILES)
    for args in (("export", cache, tmp_path / "b.tgz"), ("verify", cache), ("inspect", cache)):
        assert run_cli(*args).returncode in (0, 1)
    assert (tmp_path / "b.tgz").is_file() and not (cache / manifest_mod.LOCK_NAME).exists()


def test_export_reads_each_file_once_and_checks_those_bytes(tmp_path, monkeypatch):
    cache = tmp_path / "c"
    small_cache(cache, FILES)
    opened = []
    real = bundle_mod.open_regular
    monkeypatch.setattr(bundle_mod, "open_regular", lambda p: opened.append(p) or real(p))
    export(cache, tmp_path / "b.tgz")
    assert sorted(p.relative_to(cache).as_posix() for p in opened) == sorted(FILES)
    with tarfile.open(tmp_path / "b.tgz") as tar:
        assert {n: tar.extractfile(n).read() for n in FILES} == FILES
    (cache / "AB/k.cubin").write_bytes(b"\x7fELF" + bytes(59) + b"!")   # same size, other bytes
    with pytest.raises(CacheDirError, match="sha256 differs"):
        export(cache, tmp_path / "b2.tgz")
    assert not (tmp_path / "b2.tgz").exists()


# -- 5 and 7. a build lists only what it wrote; modes whatever the umask ---------------------------------------
def test_a_build_does_not_adopt_a_planted_file(tmp_path):
    cache = tmp_path / "c"
    (cache / "AB").mkdir(parents=True)
    (cache / "AB" / "planted.so").write_bytes(b"not ours")
    m = build(toy_spec(cache, tp=(1,)), progress=False)
    assert m.files and "AB/planted.so" not in m.files and "AB/planted.so" not in manifest_mod.load(cache).files
    assert (cache / "AB" / "planted.so").read_bytes() == b"not ours"   # left alone
    checks = json.loads(run_cli("verify", cache, "--json", check=1).stdout)["checks"]
    assert checks["checksums"]["problems"] == ["AB/planted.so: not listed in the manifest (foreign file)"]
    assert [name for name, c in checks.items() if not c["ok"]] == ["checksums"]


def test_a_build_under_umask_000_verifies(tmp_path):
    cache = tmp_path / "new" / "c"
    proc = subprocess.run([sys.executable, "-m", "autotune_cache", "build", "--target", "toy_target",
                           "--max-tokens", "1024", "--cache-dir", str(cache), "--emulate", "--no-progress"],
                          capture_output=True, text=True, timeout=900, preexec_fn=lambda: os.umask(0))
    assert proc.returncode == 0, proc.stderr
    assert mode(cache) == mode(cache.parent) == 0o755 and mode(cache / manifest_mod.MANIFEST_NAME) == 0o644
    run_cli("verify", cache, check=0)
