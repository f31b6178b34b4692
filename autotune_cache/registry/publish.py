"""`autotune-cache publish DIR URL`: export a cache (cache/bundle.py checks every file against its manifest) and put
the bundle, then its index entry, into the registry. The bundle goes first, so an entry never names a bundle that
is not there; a cache already published in that slot with the same manifest is not published twice."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import bounded_json
from ..cache import bundle as bundle_mod
from ..cache import location
from ..cache import manifest as manifest_mod
from ..cache.files import MAX_JSON_BYTES, read_plain, sha256_file
from ..errors import CacheDirError, RegistryError
from ..version import __version__
from . import index
from .select import gpu_type_of
from .store import open_store


@dataclass(frozen=True)
class PublishReport:
    record: index.Entry
    url: str
    already: bool        # the slot held this manifest already: nothing written

    def as_dict(self) -> dict:
        return {"url": self.url, "already_published": self.already, "entry": self.record.path,
                **self.record.summary()}


def _signed_by(root: Path) -> str | None:
    try:
        sig = bounded_json.json_value(read_plain(root / manifest_mod.SIG_NAME, MAX_JSON_BYTES))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CacheDirError(f"{root}: unreadable {manifest_mod.SIG_NAME} ({type(e).__name__})") from None
    kid = sig.get("key_id") if isinstance(sig, dict) else None
    return kid if isinstance(kid, str) and kid.isalnum() else "unknown"


def publish(cache_dir: str | os.PathLike, url: str, *, gpu_type: str | None = None,
            model: str | None = None) -> PublishReport:
    root = location.normalize(cache_dir)
    m = manifest_mod.load(root) if root.is_dir() else None
    if m is None:
        raise CacheDirError(f"{root}: no cache with a manifest.json to publish")
    if m.fingerprint is None:
        raise CacheDirError(f"{root}: its manifest has no fingerprint (not built by autotune-cache build)")
    done = sorted(u.id for u in m.units.values() if u.status == "done")
    if not done:
        raise CacheDirError(f"{root}: no unit is done; nothing to publish")
    units = [m.units[u] for u in done]
    signed_by = _signed_by(root)
    store = open_store(url)
    info = index.ensure_info(store, signed=signed_by is not None)
    if info.signed and signed_by is None:
        raise RegistryError(f"{store.url} holds signed bundles only: sign the cache first "
                            "(autotune-cache sign DIR --key KEY.pem)")
    # microseconds: "the newest" bundle must be well defined for two publishes within one second
    base = dict(gpu_type=gpu_type or gpu_type_of(m.fingerprint.gpu_name or "unknown"), model=model,
                tp=tuple(sorted({t for u in units for t in u.tp})),
                targets=tuple(sorted({u.target for u in units})), units=tuple(done),
                entries=len(m.entries), fingerprint=m.fingerprint, signed_by=signed_by,
                published=manifest_mod.now("microseconds"), tool_version=__version__)
    tmp = Path(tempfile.mkdtemp(prefix="autotune-cache-publish-"))
    try:
        report = bundle_mod.export(root, tmp / "bundle.tar.gz")
        sha = sha256_file(report.bundle)
        rec = index.Entry(bundle=index.bundle_path(sha), bundle_sha256=sha, bundle_bytes=report.bundle_bytes,
                           manifest_digest=report.manifest_digest, **base)
        slot_dir = rec.path.rsplit("/", 1)[0]
        for name in store.find(slot_dir):
            data = store.get(name, index.MAX_ENTRY_BYTES)
            if data is None:
                continue
            try:
                same = index.parse_record(data, name).manifest_digest == rec.manifest_digest
            except RegistryError:
                continue
            if same:
                return PublishReport(index.parse_record(data, name), store.url, already=True)
        store.put_file(rec.bundle, report.bundle)
        index.write_entry(store, rec)   # after the bundle: an entry never names a missing bundle
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PublishReport(rec, store.url, already=False)
