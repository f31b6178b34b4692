"""export / import: a cache as one relocatable .tar.gz.

Triton's `__grp__<kernel>.json` files list their members by ABSOLUTE path, and Triton drops members whose path
does not exist: a cache copied elsewhere still hits its autotune JSON but recompiles every kernel. The bundle
carries the files as they are; `import` rewrites every group file for the directory it lands in, so the moved
cache loads its binaries with no compile (the server must then use that directory, by the same absolute path).

Layout: `bundle.json` ({"format", "version", "manifest_digest", "files", "tool_version"}), `manifest.json`,
`manifest.sig` if the cache is signed, then every file the manifest lists, by its relative path. Import trusts
nothing in it: members must be plain files or directories with relative, normalized names (no links, no "..", no
absolute paths), every file must be listed in the manifest with its sha256, and the manifest must have the digest
that bundle.json names. That digest only proves the bundle is whole: whoever crafts a bundle can compute it. With
a public key, import also requires manifest.sig to be a valid signature of the manifest (signing.py).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from ..version import __version__
from . import manifest as manifest_mod
from ..errors import BundleError, CacheDirError
from .files import atomic_file, move_in, sha256_file, staging_dir
from .layout import is_group_file, members_first, read_group, relocated_group
from .manifest import FileRecord, Manifest

BUNDLE_INFO = "bundle.json"
BUNDLE_FORMAT = "autotune-cache-bundle"
BUNDLE_VERSION = 1


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
    """Write the files the manifest lists (checked against their sha256) and the manifest into `bundle`."""
    from .lock import locked
    from .scan import scan
    from .verify import require_intact

    root = Path(cache_dir).expanduser().resolve()
    out = Path(bundle).expanduser().resolve()
    if out == root or root in out.parents:
        raise CacheDirError(f"write the bundle outside the cache dir ({out} is inside {root})")
    with locked(root):
        s = scan(root)
        m = require_intact(s, "export")
        digest = m.digest()
        info = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "manifest_digest": digest,
                "files": len(m.files), "tool_version": __version__}
        on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        left_out = sorted(on_disk - set(m.files) - set(manifest_mod.OWN_FILES))
        out.parent.mkdir(parents=True, exist_ok=True)
        # 0600: the mode export has always given a bundle (mkstemp's); sharing it is the user's chmod
        with atomic_file(out, mode=0o600) as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
            _add_bytes(tar, BUNDLE_INFO, json.dumps(info, indent=1).encode())
            _add_bytes(tar, manifest_mod.MANIFEST_NAME, (root / manifest_mod.MANIFEST_NAME).read_bytes())
            if (root / manifest_mod.SIG_NAME).is_file():
                _add_bytes(tar, manifest_mod.SIG_NAME, (root / manifest_mod.SIG_NAME).read_bytes())
            for rel in sorted(m.files):
                tar.add(root / rel, arcname=rel, recursive=False, filter=_plain)
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


# -- import ---------------------------------------------------------------------------------------------------
def safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members, or BundleError if any could write outside the target: links, devices, absolute names,
    '..' components, duplicates."""
    seen = set()
    members = tar.getmembers()
    for m in members:
        name = m.name
        parts = PurePosixPath(name).parts
        if not (m.isfile() or m.isdir()):
            kind = "link" if (m.issym() or m.islnk()) else "special file"
            raise BundleError(f"unsafe bundle: {name!r} is a {kind}; a cache bundle holds plain files only")
        if (not name or name.startswith(("/", "\\")) or "\\" in name or ":" in parts[0]
                or any(p in ("..", "") for p in parts) or name != PurePosixPath(name).as_posix()):
            raise BundleError(f"unsafe bundle: member name {name!r} is absolute or leaves the cache dir")
        if m.isfile():
            if name in seen:
                raise BundleError(f"unsafe bundle: {name!r} appears twice")
            seen.add(name)
    return members


def import_bundle(bundle: str | os.PathLike, cache_dir: str | os.PathLike, public_key=None) -> ImportReport:
    """Unpack `bundle` into `cache_dir` (absent or empty) and rewrite its group files for it. Everything is
    unpacked into a staging dir inside cache_dir and checked before the first file moves in; the manifest is
    written last, so an interrupted import never looks like a complete cache. `public_key` (ed25519, PEM path or
    bytes): the bundle must carry a valid signature by it (it stays valid for the imported dir)."""
    from .lock import locked

    src = Path(bundle).expanduser()
    if not src.is_file():
        raise CacheDirError(f"{src}: no such bundle file")
    root = Path(cache_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise CacheDirError(f"{root} exists and is not a directory")
    created = not root.exists()
    if not created and any(p.name not in manifest_mod.OWN_FILES for p in root.iterdir()):
        raise CacheDirError(f"{root} is not empty: import into a new dir (then `autotune-cache merge` if needed)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheDirError(f"cannot create {root}: {e.strerror or e}") from None
    try:
        with locked(root), staging_dir(root, manifest_mod.IMPORT_STAGING) as staging:
            report = _unpack_checked(src, staging, root, public_key)
    except BaseException:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return report


def _unpack_checked(src: Path, staging: Path, root: Path, public_key=None) -> ImportReport:
    try:
        with tarfile.open(src, "r:*") as tar:
            safe_members(tar)
            if hasattr(tarfile, "data_filter"):   # Python 3.12+ / 3.11.4+: the library refuses the same too
                tar.extractall(staging, filter="data")
            else:   # pragma: no cover - older Pythons; safe_members() did the checks
                tar.extractall(staging)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if isinstance(e, BundleError):
            raise
        first = (str(e).splitlines() or [""])[0].rstrip(":")   # tarfile lists every method it tried, one a line
        raise BundleError(f"{src}: not a readable bundle ({type(e).__name__}: {first})") from None
    try:
        info = json.loads((staging / BUNDLE_INFO).read_text())
        m = Manifest.model_validate_json((staging / manifest_mod.MANIFEST_NAME).read_text())
    except (OSError, ValueError, ValidationError) as e:
        raise BundleError(f"{src}: not an autotune-cache bundle (bundle.json / manifest.json: "
                          f"{type(e).__name__})") from None
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{src}: not an autotune-cache bundle")
    if info.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{src}: bundle version {info.get('version')!r}, this tool reads {BUNDLE_VERSION}")
    digest = m.digest()
    if digest != info.get("manifest_digest"):
        raise BundleError(f"{src}: the manifest does not match the digest in bundle.json (damaged or edited)")
    unpacked = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
    extra = sorted(unpacked - set(m.files) - {BUNDLE_INFO, manifest_mod.MANIFEST_NAME, manifest_mod.SIG_NAME})
    if extra:
        raise BundleError(f"{src}: holds {len(extra)} files its manifest does not list (first: {extra[0]})")
    for rel, rec in sorted(m.files.items()):
        path = staging / rel
        if not path.is_file():
            raise BundleError(f"{src}: {rel} is listed in its manifest but missing")
        if path.stat().st_size != rec.size or sha256_file(path) != rec.sha256:
            raise BundleError(f"{src}: {rel} differs from its manifest (damaged bundle)")
    signed = staging / manifest_mod.SIG_NAME
    if public_key is not None:
        from .signing import check
        try:   # the group files still list the build's paths: only their member names are signed
            check(staging, m, public_key, require_inside=False, sig_path=signed)
        except CacheDirError as e:
            raise BundleError(f"{src}: {str(e).replace(str(staging) + '/', '')}") from None

    rewritten = 0
    for rel in sorted(m.files):
        if not is_group_file(rel):
            continue
        path = staging / rel
        try:
            text = relocated_group(read_group(path), root / Path(rel).parent)
        except (OSError, ValueError) as e:
            raise BundleError(f"{src}: {rel}: unreadable group file ({e})") from None
        path.write_text(text)
        m.files[rel] = FileRecord(size=path.stat().st_size, sha256=sha256_file(path))
        rewritten += 1
    move_in(staging, root, members_first(m.files))   # the manifest last
    if signed.is_file():   # still valid: the portable digest does not see where group members lie
        os.replace(signed, root / manifest_mod.SIG_NAME)
    manifest_mod.save(m, root)
    return ImportReport(cache_dir=root, files=len(m.files), bytes=sum(f.size for f in m.files.values()),
                        groups_rewritten=rewritten, manifest_digest=digest)
