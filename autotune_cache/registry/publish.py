"""`autotune-cache publish DIR URL`: export a cache (cache/bundle.py checks every file against its manifest) and put
the bundle, then its index entry, into the registry. The bundle goes first, so an entry never names a bundle that
is not there; a cache already published in that slot with the same manifest and signer is not published
twice.

Nothing a killed publish leaves behind stays: its local bundle is staged in one place (`staging()`) that the next
publish sweeps, and its half-written registry objects and unfinished uploads are swept by the next publish (or
`ls --gc`) once older than AUTOTUNE_CACHE_REGISTRY_STALE_AGE (store.sweep)."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import filelock

from .. import bounded_json, settings
from ..cache import bundle as bundle_mod
from ..cache import fingerprint as fingerprint_mod
from ..cache import location
from ..cache import manifest as manifest_mod
from ..cache.files import MAX_JSON_BYTES, read_plain, sha256_file
from ..errors import CacheDirError, RegistryError, SpecError, printable
from ..version import __version__
from . import index
from . import store as store_mod
from .select import gpu_type_of
from .store import open_store

STAGING = "autotune-cache-publish"   # <tmp>/autotune-cache-publish-<uid>/<random>/: the one place publishes stage in
STAGING_GRACE_S = 60.0               # a staging dir this young is never swept: its lock may not be taken yet


@dataclass(frozen=True)
class PublishReport:
    record: index.Entry
    url: str
    already: bool        # the slot held this manifest already: nothing written
    swept: tuple[store_mod.Partial, ...] = ()   # abandoned writes of earlier publishes, removed first
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"url": self.url, "already_published": self.already, "entry": self.record.path,
                "swept": [p.as_dict() for p in self.swept], "warnings": list(self.warnings), **self.record.summary()}


def _signed_by(root: Path) -> str | None:
    try:
        sig = bounded_json.json_value(read_plain(root / manifest_mod.SIG_NAME, MAX_JSON_BYTES))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CacheDirError(f"{root}: unreadable {manifest_mod.SIG_NAME} ({type(e).__name__})") from None
    kid = sig.get("key_id") if isinstance(sig, dict) else None
    return kid if isinstance(kid, str) and kid.isalnum() else "unknown"


def _checked_options(gpu_type: str | None, model: str | None) -> None:
    """The options, before anything is read or created."""
    if gpu_type is not None and (why := index.gpu_type_problem(gpu_type)) is not None:
        raise SpecError(f"--gpu-type {printable(repr(gpu_type)[:80])}: {why}")
    if model is not None and (not model.strip() or len(model) > 200 or printable(model) != model):
        raise SpecError(f"--model {printable(repr(model)[:80])}: a label is one line of printable text, at most "
                        "200 characters")


def _gpu_type(given: str | None, fp: fingerprint_mod.Fingerprint, force: bool) -> str:
    """The GPU type to publish under: `given`, which must not contradict the GPU the cache records (unless
    `force`; an emulated build's GPU is a stand-in, as fleet/job.py also says), else the recorded GPU's."""
    recorded = gpu_type_of(fp.gpu_name or "unknown")
    if given is None:
        return recorded
    if not force and not fp.emulated and fp.gpu_name and recorded.lower() != given.lower():
        raise RegistryError(f"--gpu-type {given}: the cache was built on {printable(fp.gpu_name)} ({recorded}); a "
                            f"fetch for {given} would take it as built there: publish it as {recorded}, or give "
                            "--force if you know better")
    return given


def _check_signed(url: str, info: index.RegistryInfo | None, signed_by: str | None) -> None:
    if info is not None and info.signed and signed_by is None:
        raise RegistryError(f"{url} holds signed bundles only: sign the cache first "
                            "(autotune-cache sign DIR --key KEY.pem)")


@contextmanager
def staging() -> Iterator[Path]:
    """A private dir for one publish's bundle, under `<tmp>/autotune-cache-publish-<uid>/`, the one place every
    publish stages in. Each holds a lock while it lives; a dir whose lock is free (its publisher was killed) is
    removed by the next publish (after a minute: the moment between a new dir and its lock)."""
    base = Path(tempfile.gettempdir()) / f"{STAGING}-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    st = base.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise CacheDirError(f"{base}: not a private directory of this user; remove it")
    now = time.time()
    for old in base.glob("*.lock"):
        d = old.with_suffix("")
        try:
            if now - old.stat().st_mtime < STAGING_GRACE_S:
                continue
        except FileNotFoundError:
            continue
        try:
            with filelock.FileLock(old).acquire(timeout=0):
                shutil.rmtree(d, ignore_errors=True)
                old.unlink(missing_ok=True)
        except filelock.Timeout:   # a publish at work
            continue
    name = uuid.uuid4().hex
    lock = filelock.FileLock(base / f"{name}.lock")
    with lock.acquire(timeout=0):
        d = base / name
        d.mkdir(mode=0o700)
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
            (base / f"{name}.lock").unlink(missing_ok=True)


def publish(cache_dir: str | os.PathLike, url: str, *, gpu_type: str | None = None,
            model: str | None = None, force: bool = False) -> PublishReport:
    """Put the cache in `cache_dir` into the registry at `url`. Every option is checked before anything is created;
    the first publish creates registry.json only once its bundle is made; abandoned writes older than
    AUTOTUNE_CACHE_REGISTRY_STALE_AGE are swept first (store.sweep)."""
    _checked_options(gpu_type, model)
    root = location.normalize(cache_dir)
    m = manifest_mod.load(root) if root.is_dir() else None
    if m is None:
        raise CacheDirError(f"{root}: no cache with a manifest.json to publish")
    if m.fingerprint is None:
        raise CacheDirError(f"{root}: its manifest has no fingerprint (not built by autotune-cache build)")
    claimed = index.claims(m)
    if not claimed["units"]:
        raise CacheDirError(f"{root}: no unit is done; nothing to publish")
    gpu_type = _gpu_type(gpu_type, m.fingerprint, force)
    signed_by = _signed_by(root)
    store = open_store(url)
    info = index.read_info(store)
    _check_signed(store.url, info, signed_by)
    # microseconds: "the newest" bundle must be well defined for two publishes within one second
    base = dict(gpu_type=gpu_type, model=model, **claimed, fingerprint=m.fingerprint, signed_by=signed_by,
                published=manifest_mod.now("microseconds"), tool_version=__version__)
    with staging() as tmp:
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
                held = index.parse_record(data, name)
            except RegistryError:
                continue
            # the same cache signed by another key (or now signed) is another bundle: a key's fetch takes only its own
            if (held.manifest_digest, held.signed_by) == (rec.manifest_digest, rec.signed_by):
                return PublishReport(held, store.url, already=True)
        try:
            swept, warnings = store_mod.sweep(store, settings.current().registry_stale_age), []
        except RegistryError as e:   # e.g. no permission to list uploads: the publish itself may still succeed
            swept, warnings = [], [f"abandoned writes not swept: {e}"]
        if info is None:
            info = index.ensure_info(store, signed=signed_by is not None)
            _check_signed(store.url, info, signed_by)   # a first publisher racing ours may have made it signed
        store.put_file(rec.bundle, report.bundle)
        index.write_entry(store, rec)   # after the bundle: an entry never names a missing bundle
    return PublishReport(rec, store.url, already=False, swept=tuple(swept), warnings=tuple(warnings))
