"""registry/ as a supply chain (docs/trust.md): whoever can write the index or the bundles of a registry must not
get a server to install a cache other than the one its entry names and its request asks for, nor make a fetch
write more than the signed manifest lists, nor hide a bundle the consumer's key signed. Real bundles of the toy
caches (test_registry's module fixture), on file:// and on moto's S3 server, attacked the way a writer of the
store can: entries and bundles written straight into it. Fetches run in this process (no CLI start-up) except
where the CLI's one line and exit 2 are the point."""
import contextlib
import json
import resource
import signal

import pytest
import test_registry
from helpers import tar_member, toy_spec, write_bundle

from autotune_cache.cache import manifest as manifest_mod
from autotune_cache.cache import signing
from autotune_cache.cache.bundle import export, import_bundle
from autotune_cache.cache.files import sha256_bytes, sha256_file
from autotune_cache.errors import BundleError, NoMatchingBundleError, RegistryError
from autotune_cache.registry import index
from autotune_cache.registry.fetch import fetch, select
from autotune_cache.registry.publish import publish
from autotune_cache.registry.pull import pull
from autotune_cache.registry.select import Machine
from autotune_cache.registry.store import open_store

caches = test_registry.caches   # its module fixtures: the two toy caches, the S3 server
s3 = test_registry.s3

H100 = Machine(gpu_name="H100", capability="9.0", allow_emulated=True)
ZEROS = 32 << 20   # a file of zeros a hostile manifest lists: 32 KB of gzip


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("A", "B"):
        k = ed25519.Ed25519PrivateKey.generate()
        (d / f"{name}.pem").write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        (d / f"{name}.pub").write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
        out[name] = d / f"{name}.pub"
        out[name + ".pem"] = d / f"{name}.pem"
    return out


@pytest.fixture(scope="module")
def signed(caches, keys, tmp_path_factory):
    """Signed copies of the toy caches: TP 1 by A, TP 1 by B (one slot with A's), TP 1+2 by A, and TP 1 by A with
    its manifest saying another Python (a valid bundle of A's that serves no machine here)."""
    pytest.importorskip("cryptography")
    base = tmp_path_factory.mktemp("signed")
    tp12, tp1 = caches
    out = {}
    for name, src, key in (("tp1_a", tp1, "A"), ("tp1_b", tp1, "B"), ("tp12_a", tp12, "A"), ("py_a", tp1, "A")):
        export(src, base / f"{name}.tar.gz")
        import_bundle(base / f"{name}.tar.gz", base / name)   # a copy of its own, group files pointing into it
        if name == "py_a":
            m = manifest_mod.load(base / name)
            m.fingerprint = m.fingerprint.model_copy(update={"python": "3.9.99"})
            manifest_mod.save(m, base / name)
        signing.sign(base / name, keys[key + ".pem"])
        out[name] = base / name
    return out


@pytest.fixture(params=["file", "s3"])
def url(request, tmp_path):
    if request.param == "file":
        return (tmp_path / "reg").as_uri()
    request.getfixturevalue("s3")   # the env (os.environ) that points s3fs at the server
    return f"s3://gdn-registry/{tmp_path.name}"


def spec(tp=(1,)):
    return toy_spec("unused", tp=tp)


def only_entry(url, sha):
    (rec,) = [r for r in index.scan(open_store(url)).records if r.bundle_sha256 == sha]
    return rec


def plant(url, rec: index.Entry, **update) -> index.Entry:
    """An entry written straight into the index (whoever can write the store can): `rec` with `update`, under the
    name its new content gives it (renamed consistently)."""
    forged = rec.model_copy(update={"published": "2999-01-01T00:00:00.000000+00:00", **update})
    index.write_entry(open_store(url), forged)
    return forged


def plant_bundle(url, path) -> tuple[str, int]:
    """A bundle file put into the store under its content's name; (sha256, bytes)."""
    sha = sha256_file(path)
    open_store(url).put_file(index.bundle_path(sha), path)
    return sha, path.stat().st_size


def pointing_at(bundle_sha, size) -> dict:
    return {"bundle": index.bundle_path(bundle_sha), "bundle_sha256": bundle_sha, "bundle_bytes": size}


def untouched(dest):
    """Nothing of a refused fetch is left: not DEST, not its parent (new), not a temp dir."""
    assert not dest.exists() and not dest.parent.exists()


@contextlib.contextmanager
def writes_at_most(n):
    """Any file written past `n` bytes in this process fails with EFBIG (RLIMIT_FSIZE; SIGXFSZ ignored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def zeros_bundle(path, like, extra=None):
    """A hand-made bundle, unsigned, whose manifest is `like`'s units and fingerprint with one file of ZEROS
    zero bytes: 32 KB that unpack to 32 MB."""
    m = manifest_mod.load(like)
    raw = m.model_dump(mode="json")
    zeros = bytes(ZEROS)
    raw["files"] = {"zeros.bin": {"size": ZEROS, "sha256": sha256_bytes(zeros)}}
    raw["entries"] = {}
    write_bundle(path, raw, [tar_member("zeros.bin", zeros), *(extra or [])])
    return manifest_mod.parse(json.dumps(raw).encode(), "x")


# -- 1. an entry is bound to its bundle and to the request -------------------------------------------------------
def test_an_entry_edited_to_name_another_bundle_installs_nothing(url, signed, keys, tmp_path):
    """The index entry of A's TP 1 bundle, edited to name another bundle A signed: TP 1+2 (its digest, then its
    digest too), and a TP 1 bundle built with another Python (digest and bundle edited, the claims kept). The old
    fetch installed each, printing the entry's claims."""
    tp1 = only_entry(url, publish(signed["tp1_a"], url, gpu_type="H100").record.bundle_sha256)
    tp12 = publish(signed["tp12_a"], url, gpu_type="H100").record
    py = publish(signed["py_a"], url, gpu_type="H100").record
    cases = [
        (pointing_at(tp12.bundle_sha256, tp12.bundle_bytes), "manifest digest"),
        ({**pointing_at(tp12.bundle_sha256, tp12.bundle_bytes), "manifest_digest": tp12.manifest_digest}, "units"),
        ({**pointing_at(py.bundle_sha256, py.bundle_bytes), "manifest_digest": py.manifest_digest}, "python 3.9.99"),
    ]
    store = open_store(url)
    for i, (update, what) in enumerate(cases):
        forged = plant(url, tp1, **update)
        assert select(url, spec(), H100, keys["A"])[0] == forged   # the newest: what fetch takes
        dest = tmp_path / f"srv{i}" / "cache"
        with pytest.raises(RegistryError, match="does not match its index entry") as e:
            fetch(url, dest, spec(), H100, public_key=keys["A"])
        assert what in str(e.value) and "in the bundle" in str(e.value) and "in the entry" in str(e.value)
        assert ".fetch-" not in str(e.value)
        untouched(dest)
        store.fs.rm(store.path(forged.path))
    got = fetch(url, tmp_path / "ok" / "cache", spec(), H100, public_key=keys["A"])   # honest entries still serve
    assert got.record == tp12 and manifest_mod.load(got.cache_dir).fingerprint == tp12.fingerprint


def test_a_bound_mismatch_is_one_line_exit_2(signed, keys, tmp_path, capsys):
    from autotune_cache.cli import main
    url = (tmp_path / "reg").as_uri()
    tp1 = publish(signed["tp1_a"], url, gpu_type="H100").record
    tp12 = publish(signed["tp12_a"], url, gpu_type="H100").record
    plant(url, tp1, **pointing_at(tp12.bundle_sha256, tp12.bundle_bytes))
    capsys.readouterr()
    code = main(["fetch", url, str(tmp_path / "srv" / "cache"), *test_registry.TOY, "--tp", "1", "--gpu-name",
                 "H100", "--allow-emulated", "--public-key", str(keys["A"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not match its index entry" in err[0], err
    untouched(tmp_path / "srv" / "cache")


# -- 2. verify first, then unpack; caps on what is downloaded and written ----------------------------------------
def refused_then_older(url, honest, sha, key, tmp_path, why):
    """The planted bundle `sha` (the newest, by its entry `key`'s) is skipped for the `honest` entry, then, alone,
    refused; every file this process writes meanwhile is capped below its zeros."""
    with writes_at_most(ZEROS // 4):
        got = fetch(url, tmp_path / "srv" / "cache", spec(), H100, public_key=key)
        assert got.record == honest and any(f"skipped {sha[:12]}" in w and why in w for w in got.warnings)
        store = open_store(url)
        store.fs.rm(store.path(honest.path))
        dest = tmp_path / "none" / "cache"
        with pytest.raises(BundleError, match=why) as e:
            fetch(url, dest, spec(), H100, public_key=key)
    assert "nothing was imported" in str(e.value) and f"bundles/{sha}.tar.gz" in str(e.value)
    assert ".fetch-" not in str(e.value)   # the bundle as the registry names it, not a temp path
    untouched(dest)


def test_an_unsigned_bundle_of_zeros_writes_nothing_with_a_key(url, signed, keys, tmp_path):
    """Planted as the newest bundle of A's slot, its entry claiming A: refused before a byte of zeros.bin is
    written, A's older bundle fetched instead (the old import wrote the 32 MB, then failed on the signature)."""
    tp1 = publish(signed["tp1_a"], url, gpu_type="H100").record
    m = zeros_bundle(tmp_path / "zeros.tar.gz", signed["tp1_a"])
    sha, size = plant_bundle(url, tmp_path / "zeros.tar.gz")
    plant(url, tp1, **pointing_at(sha, size), manifest_digest=m.digest(), entries=0)
    refused_then_older(url, tp1, sha, keys["A"], tmp_path, "no signature")


def test_a_bundle_signed_by_another_key_writes_nothing(url, signed, keys, tmp_path):
    """B's valid signature of a manifest listing 32 MB of zeros, its entry claiming A: refused on its signature
    before a file is written, A's older bundle fetched instead (the old import wrote the zeros, then failed on the
    signature)."""
    import base64
    tp1 = publish(signed["tp1_a"], url, gpu_type="H100").record
    m = manifest_mod.load(signed["tp1_a"])
    raw = m.model_dump(mode="json")
    raw["files"], raw["entries"] = {"zeros.bin": {"size": ZEROS, "sha256": sha256_bytes(bytes(ZEROS))}}, {}
    m = manifest_mod.parse(json.dumps(raw).encode(), "x")
    b = signing.load_private_key(keys["B.pem"])
    digest = signing.portable_digest(m, {})
    sig = {"algorithm": "ed25519", "key_id": signing.key_id(b.public_key()), "portable_digest": digest,
           "manifest_digest": m.digest(), "signature": base64.b64encode(b.sign(signing.CONTEXT + digest.encode()))
           .decode()}
    write_bundle(tmp_path / "b.tar.gz", raw, [tar_member("manifest.sig", json.dumps(sig).encode()),
                                              tar_member("zeros.bin", bytes(ZEROS))])
    sha, size = plant_bundle(url, tmp_path / "b.tar.gz")
    plant(url, tp1, **pointing_at(sha, size), manifest_digest=m.digest(), entries=0)
    refused_then_older(url, tp1, sha, keys["A"], tmp_path, "not signed by this key")


def test_an_import_writes_no_more_than_the_cap(url, caches, tmp_path, monkeypatch):
    """No key: a manifest listing more than AUTOTUNE_CACHE_MAX_BUNDLE_BYTES is refused before a byte is written
    (the old import wrote all 32 MB of zeros)."""
    tp1 = publish(caches[1], url, gpu_type="H100").record
    m = zeros_bundle(tmp_path / "zeros.tar.gz", caches[1])
    sha, size = plant_bundle(url, tmp_path / "zeros.tar.gz")
    plant(url, tp1, **pointing_at(sha, size), manifest_digest=m.digest(), entries=0)
    monkeypatch.setenv("AUTOTUNE_CACHE_MAX_BUNDLE_BYTES", str(ZEROS // 8))
    dest = tmp_path / "srv" / "cache"
    with writes_at_most(ZEROS // 4), pytest.raises(BundleError, match="more than the 4194304 an import writes"):
        fetch(url, dest, spec(), H100)
    untouched(dest)


def test_an_entry_claiming_a_huge_bundle_downloads_nothing(url, caches, tmp_path, monkeypatch):
    """An object of 12 MB named by an entry that says so, past a cap of 8 MB: nothing downloaded (the old fetch
    downloaded it all, then failed on reading it)."""
    import os
    tp1 = publish(caches[1], url, gpu_type="H100").record
    (tmp_path / "big.tar.gz").write_bytes(os.urandom(12 << 20))
    sha, size = plant_bundle(url, tmp_path / "big.tar.gz")
    plant(url, tp1, **pointing_at(sha, size))
    monkeypatch.setenv("AUTOTUNE_CACHE_MAX_BUNDLE_BYTES", str(8 << 20))
    dest = tmp_path / "srv" / "cache"
    with writes_at_most(1 << 20), pytest.raises(RegistryError, match="more than the 8388608 a fetch downloads"):
        fetch(url, dest, spec(), H100)
    untouched(dest)


# -- 3. with a key, selection takes what the key signed ------------------------------------------------------------
def test_selection_skips_bundles_the_key_did_not_sign(url, caches, signed, keys, tmp_path):
    """A's TP 1 bundle, then (newer, one slot) B's and an unsigned one written straight into the store: with A's
    key the fetch takes A's and says what it skipped; with a key that signed none, one error naming the slot and
    the signers (the old fetch took the newest and failed on it, naming a temp path)."""
    a = publish(signed["tp1_a"], url, gpu_type="H100").record
    b = publish(signed["tp1_b"], url, gpu_type="H100").record
    report = export(caches[1], tmp_path / "u.tar.gz")
    sha, size = plant_bundle(url, tmp_path / "u.tar.gz")
    unsigned = plant(url, a, **pointing_at(sha, size), manifest_digest=report.manifest_digest, signed_by=None)
    assert len({a.slot, b.slot, unsigned.slot}) == 1
    kid = {k: signing.key_id(signing.load_public_key(keys[k])) for k in ("A", "B")}

    record, warnings = select(url, spec(), H100, keys["A"])   # --dry-run
    assert record == a and any("skipped 2 bundles not signed by this key" in w for w in warnings), warnings
    got = fetch(url, tmp_path / "srv" / "cache", spec(), H100, public_key=keys["A"])
    assert got.record == a and any("skipped 2" in w for w in got.warnings)
    assert signing.check(got.cache_dir, manifest_mod.load(got.cache_dir), keys["A"]) == kid["A"]

    assert select(url, spec(), H100, keys["B"])[0] == b
    store = open_store(url)
    for rec in (a, b):
        store.fs.rm(store.path(rec.path))
    with pytest.raises(NoMatchingBundleError, match="not signed by this key") as e:
        fetch(url, tmp_path / "none" / "cache", spec(), H100, public_key=keys["A"])
    assert a.slot in str(e.value) and "unsigned" in str(e.value)
    untouched(tmp_path / "none" / "cache")


def test_an_entry_lying_about_its_signer_is_skipped_for_the_older_signed_bundle(url, signed, keys, tmp_path):
    """B's bundle planted as the newest of A's slot, its entry saying A signed it: the fetch finds B's signature
    before a file is written, notes it and takes A's older bundle (the old fetch failed on the newest)."""
    a = publish(signed["tp1_a"], url, gpu_type="H100").record
    export(signed["tp1_b"], tmp_path / "b.tar.gz")
    sha, size = plant_bundle(url, tmp_path / "b.tar.gz")
    liar = plant(url, a, **pointing_at(sha, size), manifest_digest=manifest_mod.load(signed["tp1_b"]).digest())
    assert select(url, spec(), H100, keys["A"])[0] == liar   # by its entry, it is A's newest
    refused_then_older(url, a, sha, keys["A"], tmp_path, "not signed by this key")


# -- left from the last issue: `ensure --from` leaves nothing after a failed fetch ---------------------------------
def test_a_failed_pull_leaves_no_parent_dir_or_lock(url, caches, tmp_path):
    """A registry with nothing for the request: strict raises, else falls back; either way the dest's parent
    (new) and its `.fetch.lock` are gone (the old pull left both)."""
    publish(caches[1], url, gpu_type="H100")
    for strict in (True, False):
        dest = tmp_path / f"new{strict}" / "cache"
        if strict:
            with pytest.raises(NoMatchingBundleError):
                pull(url, dest, spec(tp=(4,)), H100, strict=True)
        else:
            assert pull(url, dest, spec(tp=(4,)), H100).action == "fallback"
        untouched(dest)
    dest = tmp_path / "kept" / "cache"
    dest.parent.mkdir()
    pull(url, dest, spec(tp=(4,)), H100)
    assert list(dest.parent.iterdir()) == []   # the parent was there before: kept, its lock file not
