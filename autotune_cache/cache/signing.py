"""ed25519 signatures of a cache's manifest: `autotune-cache sign DIR --key KEY.pem` writes manifest.sig; the loader
(`install(public_key=...)`), `verify --public-key` and `import --public-key` check it. Needs the `cryptography`
package (extra `sign`).

The manifest names every file of the cache by sha256, so a valid signature over it, plus files that match it
(integrity.check_files), means: these are the bytes the key holder signed. Without a signature the manifest only
proves that files were not damaged or mixed: whoever can write the directory can rewrite the manifest too.

What is signed is the manifest's *portable digest*: like Manifest.digest(), `updated` left out, but each Triton group
file (`__grp__*.json`, which lists its members by absolute path) counted by its member names alone, not by its
bytes. Those are the only things `import` changes when it moves a cache, so a signed cache stays signed at its new
path. The names are all that matters of a group because the check requires each member path to be, literally,
`<the group's own dir>/<its name>` (integrity.stray_members: compared as strings, never resolved): the names then
fully determine which files the group loads, and those files are themselves listed by sha256. A group pointing
anywhere else, a link that resolves back inside included, fails the check.

Keys: `openssl genpkey -algorithm ed25519 -out key.pem` (private, for `sign`) and
`openssl pkey -in key.pem -pubout -out key.pub.pem` (public, for the checks).
"""
from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path

from .. import bounded_json
from ..errors import AutotuneCacheError, IntegrityError
from . import location
from . import manifest as manifest_mod
from .files import MAX_JSON_BYTES, read_plain, sha256_bytes, write_atomic
from .integrity import stray_members
from .layout import is_group_file, parse_group
from .manifest import Manifest

ALGORITHM = "ed25519"
CONTEXT = b"autotune-cache manifest signature v1\n"   # what is signed: CONTEXT + portable digest (hex)


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise AutotuneCacheError("signatures need the `cryptography` package: pip install "
                                 "'autotune-cache[sign]'") from None
    return serialization, ed25519


def _pem(key: str | os.PathLike | bytes) -> bytes:
    if isinstance(key, bytes):
        return key
    text = str(key)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        return Path(text).expanduser().read_bytes()
    except OSError as e:
        raise AutotuneCacheError(f"{text}: cannot read the key ({e.strerror or e})") from None


def load_private_key(key: str | os.PathLike | bytes):
    serialization, ed25519 = _crypto()
    try:
        k = serialization.load_pem_private_key(_pem(key), password=None)
    except (ValueError, TypeError) as e:
        raise AutotuneCacheError(f"not an unencrypted PEM private key ({e})") from None
    if not isinstance(k, ed25519.Ed25519PrivateKey):
        raise AutotuneCacheError(f"the key is {type(k).__name__}, not ed25519")
    return k


def load_public_key(key: str | os.PathLike | bytes):
    serialization, ed25519 = _crypto()
    try:
        k = serialization.load_pem_public_key(_pem(key))
    except (ValueError, TypeError) as e:
        raise AutotuneCacheError(f"not a PEM public key ({e})") from None
    if not isinstance(k, ed25519.Ed25519PublicKey):
        raise AutotuneCacheError(f"the public key is {type(k).__name__}, not ed25519")
    return k


def public_key_of(public_key):
    """A loaded public key from a PEM path or bytes (load_public_key); one loaded already as it is."""
    return load_public_key(public_key) if isinstance(public_key, (str, bytes, os.PathLike)) else public_key


def key_id(public_key) -> str:
    """sha256 of the raw public key, first 16 hex digits: names the key in manifest.sig and in messages."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_bytes(raw)[:16]


def group_members(paths: Mapping[str, str]) -> str:
    """What of a group file is signed: its member names and file names, not where they lie."""
    return sha256_bytes(json.dumps(sorted((name, Path(p).name) for name, p in paths.items())))


def read_groups(root: Path, manifest: Manifest, *, require_inside: bool) -> dict[str, dict[str, str]]:
    """child_paths of every group file the manifest lists. require_inside: every member must be at `<the group's
    own dir>/<its name>` under root (IntegrityError otherwise); off for a bundle's staging dir (import rewrites
    them)."""
    out = {}
    for rel in manifest.files:
        if not is_group_file(rel):
            continue
        try:
            out[rel] = parse_group(read_plain(root / rel, MAX_JSON_BYTES))
        except (OSError, ValueError) as e:
            raise IntegrityError(f"{rel}: unreadable group file ({type(e).__name__}): the signature cannot be "
                                 "checked", files=[rel]) from None
    if require_inside:
        require_members_inside(root, out)
    return out


def require_members_inside(root: Path, groups: Mapping[str, Mapping[str, str]]) -> None:
    """IntegrityError naming the first group file with a member not at `<its own dir>/<its name>` (see the module
    doc: only then does the signature say what the group loads)."""
    for rel, paths in sorted(groups.items()):
        stray = stray_members(paths, Path(root) / Path(rel).parent)
        if stray:
            raise IntegrityError(f"{rel}: lists {stray[0]}, outside its directory (copied without "
                                 "`autotune-cache import`?): the signature does not cover it", files=[rel])


def portable_digest(manifest: Manifest, groups: Mapping[str, Mapping[str, str]]) -> str:
    """sha256 over the manifest without `updated`, with each group file's record replaced by its member names."""
    data = manifest.model_dump(mode="json")
    data.pop("updated", None)
    for rel, paths in groups.items():
        data["files"][rel] = {"group_members": group_members(paths)}
    return sha256_bytes(json.dumps(data, sort_keys=True))


def sign(cache_dir: str | os.PathLike, private_key: str | os.PathLike | bytes) -> dict:
    """Write <cache_dir>/manifest.sig for its manifest, after checking that every file matches the manifest and
    that every group's members are in its own dir (a signature must not bless a tampered cache)."""
    from . import integrity
    from .lock import locked

    key = load_private_key(private_key)
    root = location.normalize(cache_dir)
    if not root.is_dir():   # before the lock, which would create the dir and its lock file
        raise AutotuneCacheError(f"{root}: no such cache directory" if not root.exists()
                                 else f"{root} is not a directory (sign takes the cache dir)")
    if not manifest_mod.path_of(root).exists():
        raise AutotuneCacheError(f"{root}: no manifest.json to sign (sign a cache built by autotune-cache)")
    with locked(root):
        m = manifest_mod.load(root)
        if m is None:
            raise AutotuneCacheError(f"{root}: no manifest.json to sign")
        check = integrity.check_files(root, m)
        if not check.ok:
            raise IntegrityError(f"{root}: not signed, its files do not match its manifest: {check.summary()}",
                                 files=[p.path for p in check.problems])
        digest = portable_digest(m, read_groups(root, m, require_inside=True))
        sig = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()), "portable_digest": digest,
               "manifest_digest": m.digest(),
               "signature": base64.b64encode(key.sign(CONTEXT + digest.encode())).decode()}
        write_atomic(root / manifest_mod.SIG_NAME, json.dumps(sig, indent=1) + "\n")
    return sig


def check(root: Path, manifest: Manifest, public_key, *, require_inside: bool = True,
          sig_path: Path | None = None, groups: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """IntegrityError unless <root>/manifest.sig is a valid signature of `manifest` by `public_key`. Returns the
    key id. The files themselves are integrity.check_files' job. `groups`: every listed group file's child_paths
    as that check parsed them from the bytes it hashed (else they are read here)."""
    _crypto()   # a clear error when `cryptography` is missing
    public_key = public_key_of(public_key)   # a missing key file is the first thing to name
    sig_path = sig_path or Path(root) / manifest_mod.SIG_NAME
    try:
        data = read_plain(sig_path, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise IntegrityError(f"{sig_path}: no signature, and a public key was given (sign with `autotune-cache "
                             "sign DIR --key KEY.pem`)", files=[manifest_mod.SIG_NAME]) from None
    except OSError as e:
        raise IntegrityError(f"{sig_path}: unreadable signature ({type(e).__name__})",
                             files=[manifest_mod.SIG_NAME]) from None
    if groups is None:
        groups = read_groups(Path(root), manifest, require_inside=require_inside)
    elif require_inside:
        require_members_inside(Path(root), groups)
    return check_bytes(data, manifest, groups, public_key, str(sig_path))


def check_bytes(data: bytes, manifest: Manifest, groups: Mapping[str, Mapping[str, str]], public_key,
                where: str) -> str:
    """IntegrityError unless `data` (a manifest.sig's bytes, named `where` in messages) is a valid signature by
    `public_key` of `manifest` whose group files list `groups`; returns the key id. What a bundle's import checks
    before it writes a file (bundle.py), and `check` once it has read a dir's."""
    _crypto()
    pub = public_key_of(public_key)
    kid = key_id(pub)
    try:
        sig = bounded_json.json_value(data)
        signature = base64.b64decode(sig["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{where}: unreadable signature ({type(e).__name__})",
                             files=[manifest_mod.SIG_NAME]) from None
    if sig.get("algorithm") != ALGORITHM:
        raise IntegrityError(f"{where}: algorithm {sig.get('algorithm')!r}, expected {ALGORITHM}",
                             files=[manifest_mod.SIG_NAME])
    digest = portable_digest(manifest, groups)
    try:
        _check_sig(pub, signature, CONTEXT + digest.encode())
    except ValueError:
        why = ("the manifest changed since it was signed (re-sign it)" if sig.get("portable_digest") != digest
               else f"not signed by this key ({kid}; signed by {sig.get('key_id')})")
        raise IntegrityError(f"{where}: the signature does not verify: {why}",
                             files=[manifest_mod.SIG_NAME, manifest_mod.MANIFEST_NAME]) from None
    return kid


def check_claimed(data: bytes, public_key, where: str) -> str:
    """IntegrityError unless `data` (a manifest.sig's bytes) is `public_key`'s valid signature of the portable
    digest it names; returns that digest. A first check, before the manifest's group files are read: check_bytes
    must then find the manifest's own digest equal to it."""
    _crypto()
    pub = public_key_of(public_key)
    try:
        sig = bounded_json.json_value(data)
        signature = base64.b64decode(sig["signature"], validate=True)
        claimed = sig["portable_digest"]
        if not isinstance(claimed, str):
            raise TypeError("portable_digest")
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{where}: unreadable signature ({type(e).__name__})",
                             files=[manifest_mod.SIG_NAME]) from None
    try:
        _check_sig(pub, signature, CONTEXT + claimed.encode())
    except ValueError:
        raise IntegrityError(f"{where}: the signature does not verify: not signed by this key ({key_id(pub)}; "
                             f"signed by {str(sig.get('key_id'))[:64]})", files=[manifest_mod.SIG_NAME]) from None
    return claimed


def public_key_id(public_key) -> str:
    """key_id of a public key given as a PEM path or bytes (or a loaded key): what an index entry's `signed_by`
    names."""
    return key_id(public_key_of(public_key))


def _check_sig(pub, signature: bytes, data: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    try:
        pub.verify(signature, data)
    except InvalidSignature:
        raise ValueError("bad signature") from None
