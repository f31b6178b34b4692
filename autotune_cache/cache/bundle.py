"""export / import: a cache as one relocatable .tar.gz.

Triton's `__grp__<kernel>.json` files list their members by ABSOLUTE path, and Triton drops members whose path
does not exist: a cache copied elsewhere still hits its autotune JSON but recompiles every kernel. The bundle
carries the files as they are; `import` rewrites every group file for the directory it lands in, so the moved
cache loads its binaries with no compile (the server must then use that directory, by the same absolute path).

Layout: `bundle.json` ({"format", "version", "manifest_digest", "files", "tool_version"}), `manifest.json`,
`manifest.sig` if the cache is signed, then every file the manifest lists, by its relative path.

`export` only reads the cache (no lock: it works on a read-only dir): each listed file is read once, and the bytes
that went into the bundle are the bytes checked against the manifest's sha256.

`import` trusts nothing in a bundle and writes nothing it has not checked. It reads the tar as a stream: bundle.json
and manifest.json first (size-capped; a bundle that does not start with them is refused), then each member is
checked before a byte of it is written: a plain file (no link, device or other special member; directories are
skipped), a relative, normalized name (no "..", no absolute path), listed in the manifest (or manifest.sig), its
size the manifest's, once. Its bytes are hashed as they are written and must have the manifest's sha256; so at most
the manifest's sizes are written, all into a staging dir inside the target, which goes on any failure (with a target
dir the import created), and never more than AUTOTUNE_CACHE_MAX_BUNDLE_BYTES (the manifest's total is checked
first). The manifest must have the digest that bundle.json names. That digest only proves the bundle is whole:
whoever crafts a bundle can compute it. With a public key, a first pass over the stream writes nothing: manifest.sig
must follow the manifest and verify with the key (signing.py), over the manifest and the group files' member names
(read into memory, each checked against the manifest); only then does the second pass, the one that writes, begin,
and it must find the same manifest. A caller's `accept` (fetch: the entry the bundle was chosen by) sees the checked
manifest before a file is written too.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from .. import bounded_json
from ..errors import BundleError, BundleSignatureError, CacheDirError
from ..version import __version__
from . import location
from . import manifest as manifest_mod
from .files import (
    FILE_MODE,
    MAX_JSON_BYTES,
    Created,
    atomic_file,
    inside,
    move_in,
    open_new,
    open_regular,
    path_problem,
    read_regular,
    sha256_bytes,
    staging_dir,
)
from .layout import is_group_file, members_first, parse_group, read_group, relocated_group
from .manifest import FileRecord, Manifest

BUNDLE_INFO = "bundle.json"
BUNDLE_FORMAT = "autotune-cache-bundle"
BUNDLE_VERSION = 1
MAX_INFO_BYTES = 1 << 20    # bundle.json: a few hundred bytes
MAX_SIG_BYTES = 64 << 10    # manifest.sig: about 400 bytes
BLOCK = 1 << 20


@dataclass(frozen=True)
class ExportReport:
    bundle: Path
    files: int
    bytes: int                 # of the files, uncompressed
    bundle_bytes: int          # of the .tar.gz
    manifest_digest: str
    left_out: tuple[str, ...]  # files on disk that the manifest does not list (not exported)

    def as_dict(self) -> dict:
        return {"bundle": str(self.bundle), "files": self.files, "bytes": self.bytes,
                "bundle_bytes": self.bundle_bytes, "manifest_digest": self.manifest_digest,
                "left_out": list(self.left_out)}


@dataclass(frozen=True)
class ImportReport:
    cache_dir: Path
    files: int
    bytes: int
    groups_rewritten: int      # group files now pointing into cache_dir
    manifest_digest: str       # of the manifest in the bundle (checked)

    def as_dict(self) -> dict:
        return {"cache_dir": str(self.cache_dir), "files": self.files, "bytes": self.bytes,
                "groups_rewritten": self.groups_rewritten, "manifest_digest": self.manifest_digest}


# -- export ---------------------------------------------------------------------------------------------------
def export(cache_dir: str | os.PathLike, bundle: str | os.PathLike) -> ExportReport:
    """Write the manifest and the files it lists (each read once, checked against its sha256) into `bundle`."""
    root = location.normalize(cache_dir)
    out = Path(bundle).expanduser().resolve()
    if out == root or root in out.parents:
        raise CacheDirError(f"write the bundle outside the cache dir ({out} is inside {root})")
    if not root.is_dir():
        raise CacheDirError(f"{root}: no such cache directory" if not root.exists() else f"{root} is not a directory")
    data = manifest_mod.read(root)
    if data is None:
        raise CacheDirError(f"{root}: no readable manifest.json; export needs a cache built by autotune-cache")
    m = manifest_mod.parse(data, manifest_mod.path_of(root))   # the bytes exported are the bytes checked
    try:
        sig = read_regular(root / manifest_mod.SIG_NAME, MAX_SIG_BYTES)
    except FileNotFoundError:
        sig = None
    digest = m.digest()
    info = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "manifest_digest": digest,
            "files": len(m.files), "tool_version": __version__}
    left_out = sorted(set(manifest_mod.file_stats(root)) - set(m.files))
    out.parent.mkdir(parents=True, exist_ok=True)
    # 0600: the mode export has always given a bundle (mkstemp's); sharing it is the user's chmod
    with atomic_file(out, mode=0o600) as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
        _add_bytes(tar, BUNDLE_INFO, json.dumps(info, indent=1).encode())
        _add_bytes(tar, manifest_mod.MANIFEST_NAME, data)
        if sig is not None:
            _add_bytes(tar, manifest_mod.SIG_NAME, sig)
        for rel, rec in sorted(m.files.items()):
            _add_checked(tar, root, rel, rec)
    return ExportReport(bundle=out, files=len(m.files), bytes=sum(f.size for f in m.files.values()),
                        bundle_bytes=out.stat().st_size, manifest_digest=digest, left_out=tuple(left_out))


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner names or ids of the build machine in the bundle."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _plain(tarfile.TarInfo(name))
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


class _Hashing(io.RawIOBase):
    """A file read through: what tarfile copies into the bundle is exactly what was hashed."""

    def __init__(self, f: BinaryIO):
        self.f, self.h = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def _add_checked(tar: tarfile.TarFile, root: Path, rel: str, rec: FileRecord) -> None:
    """One listed file into the bundle, refused (the bundle is not written) unless its bytes are the manifest's."""
    path = inside(root, rel)
    try:
        f = open_regular(path)
    except FileNotFoundError:
        raise _differs(root, rel, "listed in the manifest, missing on disk") from None
    except CacheDirError as e:
        raise _differs(root, rel, str(e).removeprefix(f"{path}: ")) from None
    with f:
        st = os.fstat(f.fileno())
        if st.st_size != rec.size:
            raise _differs(root, rel, f"size {st.st_size}, the manifest says {rec.size}")
        info = _plain(tarfile.TarInfo(rel))
        info.size, info.mtime = rec.size, int(st.st_mtime)
        info.mode = 0o755 if st.st_mode & 0o100 else 0o644
        reader = _Hashing(f)
        try:
            tar.addfile(info, reader)   # copies exactly info.size bytes; fewer (truncated meanwhile): OSError
        except OSError as e:
            raise _differs(root, rel, f"changed while it was read ({e})") from None
        if reader.h.hexdigest() != rec.sha256:
            raise _differs(root, rel, "sha256 differs from the manifest")


def _differs(root: Path, rel: str, why: str) -> CacheDirError:
    return CacheDirError(f"{root}: {rel}: {why}; nothing exported (run `autotune-cache verify` on it, then rebuild "
                         "or prune)")


# -- import ---------------------------------------------------------------------------------------------------
def check_member(m: tarfile.TarInfo) -> None:
    """BundleError if member `m` could write outside the target or is no plain file or directory: links, devices,
    absolute names, '..' parts, names no manifest may hold (files.path_problem)."""
    name = m.name
    if not (m.isfile() or m.isdir()):
        kind = "link" if (m.issym() or m.islnk()) else "special file"
        raise BundleError(f"unsafe bundle: {name!r} is a {kind}; a cache bundle holds plain files only")
    problem = path_problem(name)
    if problem is not None or name != PurePosixPath(name).as_posix():
        raise BundleError(f"unsafe bundle: member name {name!r} is absolute or leaves the cache dir "
                          f"({problem or 'not normalized'})")


def import_bundle(bundle: str | os.PathLike, cache_dir: str | os.PathLike, public_key=None, *,
                  accept: Callable[[Manifest], None] | None = None, name: str | None = None,
                  max_bytes: int | None = None) -> ImportReport:
    """Unpack `bundle` into `cache_dir` (absent or empty) and rewrite its group files for it. Every member is
    checked before it is written (see the module doc), into a staging dir inside cache_dir; files move in only when
    all are there, the manifest last, so an interrupted import never looks like a complete cache. `public_key`
    (ed25519, PEM path or bytes): the bundle must carry a valid signature by it (it stays valid for the imported
    dir), checked before any file is written. `accept(manifest)`: raises to refuse the bundle's manifest (checked,
    signed) before any file is written (fetch: the manifest its index entry names). `name`: the bundle in messages
    (default its path). `max_bytes`: the most its files may weigh (default AUTOTUNE_CACHE_MAX_BUNDLE_BYTES)."""
    from .. import settings
    from .lock import locked

    src = Path(bundle).expanduser()
    label = name or str(src)
    if not src.is_file():
        raise CacheDirError(f"{label}: no such bundle file")
    root = location.normalize(cache_dir)
    if root.exists() and not root.is_dir():
        raise CacheDirError(f"{root} exists and is not a directory")
    if root.exists() and any(p.name not in manifest_mod.OWN_FILES for p in root.iterdir()):
        raise CacheDirError(f"{root} is not empty: import into a new dir (then `autotune-cache merge` if needed)")
    cap = settings.current().max_bundle_bytes if max_bytes is None else max_bytes
    signed_digest = _verified_first(src, label, public_key, cap) if public_key is not None else None

    def before_writing(m: Manifest) -> None:
        """Whatever refuses the manifest refuses it here, before the first byte of a file is written."""
        if signed_digest is not None and m.digest() != signed_digest:
            raise BundleError(f"{label}: changed while it was read (its manifest is not the one checked)")
        _check_size(label, m, cap)
        if accept is not None:
            accept(m)

    created = Created()   # a failure takes away what this call made, and nothing else (files.Created)
    with created.undone_on_error():
        try:
            created.dirs(root)
        except OSError as e:
            raise CacheDirError(f"cannot create {root}: {e.strerror or e}") from None
        with locked(root, created=created), staging_dir(root, manifest_mod.IMPORT_STAGING) as staging:
            try:
                report = _unpack_checked(src, label, staging, root, public_key, created, before_writing)
            except OSError as e:   # the bundle's reads are BundleErrors already: this is the target's disk
                raise CacheDirError(f"{root}: cannot write ({e.strerror or e}); nothing was imported") from None
    return report


@contextmanager
def _reading(src: str) -> Iterator[None]:
    """Errors of reading the bundle (not a tar, truncated, bad gzip) as one BundleError."""
    try:
        yield
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as e:
        first = (str(e).splitlines() or [""])[0].rstrip(":")   # tarfile lists every method it tried, one a line
        raise BundleError(f"{src}: not a readable bundle ({type(e).__name__}: {first})") from None


def _member_file(src: str, tar: tarfile.TarFile, ti: tarfile.TarInfo) -> IO[bytes]:
    """The reader of a regular file member (check_member lets no other kind with bytes through)."""
    with _reading(src):
        f = tar.extractfile(ti)
    if f is None:
        raise BundleError(f"unsafe bundle: {ti.name!r} is not a regular file")
    return f


def _read_member(src: str, tar: tarfile.TarFile, ti: tarfile.TarInfo, limit: int) -> bytes:
    """A small member's bytes (bundle.json, manifest.json, manifest.sig), refused beyond `limit`."""
    if ti.size > limit:
        raise BundleError(f"{src}: {ti.name} is {ti.size} bytes, more than the {limit} it may have")
    f = _member_file(src, tar, ti)
    with _reading(src):
        data = f.read(ti.size)
    if len(data) != ti.size:
        raise BundleError(f"{src}: not a readable bundle ({ti.name} is truncated)")
    return data


def _write_member(src: str, tar: tarfile.TarFile, ti: tarfile.TarInfo, path: Path) -> str:
    """Write member `ti` (its size checked already) to `path`, a new file; returns the sha256 of what was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    # the bundle's mode bits are its author's: only whether the file is executable is kept
    with open_new(path, 0o755 if ti.mode & 0o100 else FILE_MODE) as out:
        f = _member_file(src, tar, ti)
        left = ti.size
        while left:
            with _reading(src):
                block = f.read(min(left, BLOCK))
            if not block:
                raise BundleError(f"{src}: not a readable bundle ({ti.name} is truncated)")
            h.update(block)
            out.write(block)
            left -= len(block)
    return h.hexdigest()


def _checked_manifest(src: str, own: dict[str, bytes]) -> Manifest:
    """The bundle's manifest, from its first two members, checked against bundle.json."""
    try:
        info = bounded_json.json_value(own[BUNDLE_INFO])
    except (KeyError, ValueError) as e:
        raise BundleError(f"{src}: not an autotune-cache bundle (bundle.json: {type(e).__name__})") from None
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{src}: not an autotune-cache bundle")
    if info.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{src}: bundle version {info.get('version')!r:.40}, this tool reads {BUNDLE_VERSION}")
    if manifest_mod.MANIFEST_NAME not in own:
        raise BundleError(f"{src}: not an autotune-cache bundle (no manifest.json)")
    try:
        m = manifest_mod.parse(own[manifest_mod.MANIFEST_NAME], manifest_mod.MANIFEST_NAME)
    except CacheDirError as e:
        raise BundleError(f"{src}: not an autotune-cache bundle ({e})") from None
    if info.get("manifest_digest") not in (m.digest(), m.written_digest()):   # the latter: an older bundle
        raise BundleError(f"{src}: the manifest does not match the digest in bundle.json (damaged or edited)")
    return m


def _check_size(src: str, m: Manifest, cap: int) -> None:
    """What the manifest says the files weigh, against the absolute cap (AUTOTUNE_CACHE_MAX_BUNDLE_BYTES): every
    member's size is then checked against the manifest, so no import writes more than this."""
    need = sum(r.size for r in m.files.values())
    if need > cap:
        raise BundleError(f"{src}: its manifest lists {need} bytes of files, more than the {cap} an import writes "
                          "(AUTOTUNE_CACHE_MAX_BUNDLE_BYTES); nothing was imported")


def _check_room(src: str, staging: Path, m: Manifest) -> None:
    """What the manifest says the files weigh must fit: a bundle of zeros compresses a thousandfold."""
    need, free = sum(r.size for r in m.files.values()), shutil.disk_usage(staging).free
    if need > free:
        raise BundleError(f"{src}: its files take {need} bytes, {staging.parent} has {free} free; nothing was imported")


def _members(src: str, tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The tar stream's members in order, each checked (check_member) before it is seen."""
    while True:
        with _reading(src):
            ti = tar.next()
        if ti is None:
            return
        check_member(ti)
        yield ti


def _head(src: str, members: Iterator[tarfile.TarInfo], tar: tarfile.TarFile) -> dict[str, bytes]:
    """bundle.json and manifest.json, the first two members (what export writes first, in this order)."""
    own: dict[str, bytes] = {}
    for want in (BUNDLE_INFO, manifest_mod.MANIFEST_NAME):
        ti = next(members, None)
        if ti is None or ti.name != want or not ti.isfile():
            raise BundleError(f"{src}: not an autotune-cache bundle (it must begin with bundle.json and "
                              f"manifest.json, not {'nothing' if ti is None else repr(ti.name)})")
        own[want] = _read_member(src, tar, ti, MAX_INFO_BYTES if want == BUNDLE_INFO
                                 else manifest_mod.MAX_MANIFEST_BYTES)
    return own


def _verified_first(path: Path, src: str, public_key, cap: int) -> str:
    """The first of two passes over the bundle, writing nothing: its manifest.sig (the member export writes right
    after the manifest) must be `public_key`'s signature of its manifest, whose group files (the only members the
    signature reads, by their member names) are read into memory, each checked against the manifest's size and
    sha256; the other members are only checked to be listed, with the manifest's size. Returns the manifest's
    digest, which the second pass (the one that writes) must find again."""
    from .signing import check_bytes, check_claimed, public_key_of

    with _reading(src):
        tar = tarfile.open(path, mode="r|*")
    with tar:
        members = _members(src, tar)
        own = _head(src, members, tar)
        m = _checked_manifest(src, own)
        _check_size(src, m, cap)   # before the stream is read on: a signed manifest is no licence for any size
        ti = next(members, None)
        if ti is None or ti.name != manifest_mod.SIG_NAME or not ti.isfile():
            raise BundleSignatureError(f"{src}: no signature ({manifest_mod.SIG_NAME} must follow its manifest), "
                                       "and a public key was given; nothing was imported")
        sig = _read_member(src, tar, ti, MAX_SIG_BYTES)
        with _signature_refused(src):   # another key's (or a forged) signature stops here, before the rest is read
            public_key = public_key_of(public_key)   # loaded once, for both checks
            check_claimed(sig, public_key, f"{src}: {manifest_mod.SIG_NAME}")
        groups: dict[str, dict[str, str]] = {}
        for ti in members:
            if ti.isdir():
                continue
            rec = m.files.get(ti.name)
            if rec is None or ti.size != rec.size or ti.name in groups:
                raise BundleError(f"{src}: {ti.name} is not what its manifest lists (damaged or unsafe bundle)")
            if is_group_file(ti.name):
                data = _read_member(src, tar, ti, MAX_JSON_BYTES)
                if sha256_bytes(data) != rec.sha256:
                    raise BundleError(f"{src}: {ti.name} differs from its manifest (damaged bundle)")
                try:
                    groups[ti.name] = parse_group(data)
                except (ValueError, RecursionError) as e:
                    raise BundleError(f"{src}: {ti.name}: unreadable group file ({type(e).__name__})") from None
    missing = sorted(rel for rel in m.files if is_group_file(rel) and rel not in groups)
    if missing:
        raise BundleError(f"{src}: {missing[0]} is listed in its manifest but missing")
    with _signature_refused(src):
        check_bytes(sig, m, groups, public_key, f"{src}: {manifest_mod.SIG_NAME}")
    return m.digest()


@contextmanager
def _signature_refused(src: str) -> Iterator[None]:
    """A signature check's refusal as BundleSignatureError (fetch then tries the slot's next bundle), a signature
    nested too deeply to parse as a BundleError."""
    try:
        yield
    except CacheDirError as e:
        raise BundleSignatureError(f"{e}; nothing was imported") from None
    except RecursionError:
        raise BundleError(f"{src}: manifest.sig: unreadable signature (nested too deeply)") from None


def _unpack_checked(path: Path, src: str, staging: Path, root: Path, public_key, created: Created,
                    before_writing: Callable[[Manifest], None]) -> ImportReport:
    first = (BUNDLE_INFO, manifest_mod.MANIFEST_NAME)
    m: Manifest | None = None
    written: set[str] = set()
    signed = staging / manifest_mod.SIG_NAME
    with _reading(src):
        tar = tarfile.open(path, mode="r|*")   # a stream: each member is seen once, in order, never looked up
    with tar:
        members = _members(src, tar)
        own = _head(src, members, tar)
        for ti in members:
            if ti.isdir():   # nothing to write: a file's dirs are made with it
                continue
            if m is None:   # before the first byte of any other member is written
                m = _checked_manifest(src, own)
                before_writing(m)
                _check_room(src, staging, m)
            if ti.name in first or ti.name in written or (ti.name == manifest_mod.SIG_NAME and signed.exists()):
                raise BundleError(f"unsafe bundle: {ti.name!r} appears twice")
            if ti.name == manifest_mod.SIG_NAME:
                with open_new(signed) as out:
                    out.write(_read_member(src, tar, ti, MAX_SIG_BYTES))
                continue
            rec = m.files.get(ti.name)
            if rec is None:
                raise BundleError(f"{src}: holds files its manifest does not list (first: {ti.name})")
            if ti.size != rec.size:
                raise BundleError(f"{src}: {ti.name} differs from its manifest (damaged bundle)")
            if _write_member(src, tar, ti, inside(staging, ti.name)) != rec.sha256:
                raise BundleError(f"{src}: {ti.name} differs from its manifest (damaged bundle)")
            written.add(ti.name)
    if m is None:
        m = _checked_manifest(src, own)
        before_writing(m)
    for rel in sorted(m.files):
        if rel not in written:
            raise BundleError(f"{src}: {rel} is listed in its manifest but missing")
    digest = m.digest()
    groups = {}
    for rel in sorted(m.files):
        if is_group_file(rel):
            try:
                groups[rel] = read_group(inside(staging, rel))
            except (OSError, ValueError, RecursionError) as e:
                raise BundleError(f"{src}: {rel}: unreadable group file ({type(e).__name__}: {e})") from None
    if public_key is not None:
        from .signing import check
        try:   # checked before the first write (_verified_first); again on what was written, as a dir's is
            check(staging, m, public_key, require_inside=False, sig_path=signed, groups=groups)
        except CacheDirError as e:
            raise BundleError(f"{src}: {str(e).replace(str(staging) + '/', '')}") from None
        except RecursionError:
            raise BundleError(f"{src}: manifest.sig: unreadable signature (nested too deeply)") from None

    for rel, paths in groups.items():   # each now lists its members where they land
        text = relocated_group(paths, root / Path(rel).parent)
        inside(staging, rel).write_bytes(text.encode())
        m.files[rel] = FileRecord(size=len(text.encode()), sha256=sha256_bytes(text))
    move_in(staging, root, members_first(m.files), created)   # the manifest last
    if signed.is_file():   # still valid: the portable digest does not see where group members lie
        created.file_if_new(root / manifest_mod.SIG_NAME)
        os.replace(signed, root / manifest_mod.SIG_NAME)
    created.file_if_new(manifest_mod.path_of(root))
    manifest_mod.save(m, root)
    return ImportReport(cache_dir=root, files=len(m.files), bytes=sum(f.size for f in m.files.values()),
                        groups_rewritten=len(groups), manifest_digest=digest)
