"""`autotune-cache fetch URL DIR --model M --tp T`: pick the bundle for this machine (select.py; with a public key,
among the bundles its entries say that key signed), download it next to DIR (no more than its entry claims, nor
AUTOTUNE_CACHE_MAX_BUNDLE_BYTES), check its sha256 against the index entry, and import it into DIR (cache/bundle.py:
with a key, the signature checked before a file is written; every member checked). Before a file is written the
imported manifest is bound to its entry and to the request (`bind`): an entry edited to name another valid bundle
installs nothing; a bundle whose signature is not the key's, though its entry says so, is skipped for the next
older one of its slot. A signed registry needs a public key."""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..builder.plan import plan as make_plan
from ..builder.spec import BuildSpec
from ..cache import bundle as bundle_mod
from ..cache import location
from ..cache.files import Created, sha256_file
from ..cache.manifest import Manifest
from ..errors import BundleSignatureError, CacheDirError, RegistryError
from . import index
from .machine import Here
from .select import Choice, Machine, choose, unfit
from .store import Store, open_store

PUBLIC_KEY_ENV = "AUTOTUNE_CACHE_PUBLIC_KEY"


@dataclass(frozen=True)
class FetchReport:
    record: index.Entry
    cache_dir: Path
    warnings: tuple[str, ...]
    seconds: float
    files: int

    def as_dict(self) -> dict:
        return {"cache_dir": str(self.cache_dir), "warnings": list(self.warnings), "seconds": round(self.seconds, 3),
                "files": self.files, **self.record.summary()}


def planned_units(spec: BuildSpec) -> list[str]:
    return [u.id for u in make_plan(spec).units]


def select(url: str, spec: BuildSpec, machine: Machine, public_key=None,
           misses: Callable[[index.Entry], list[str]] | None = None) -> tuple[index.Entry, tuple[str, ...]]:
    """The record fetch would download, and its warnings (a scan's bad entries, a GPU-name fallback, bundles
    skipped as not signed by `public_key`). `misses`: machine.Here().misses unless given."""
    choice, warnings = _choice(url, spec, machine, public_key, misses or Here().misses)
    return choice.record, warnings


def _choice(url: str, spec: BuildSpec, machine: Machine, public_key,
            misses: Callable[[index.Entry], list[str]]) -> tuple[Choice, tuple[str, ...]]:
    store = open_store(url)
    found = index.scan(store)
    if found.info is None and not found.records:
        raise RegistryError(f"{store.url}: no registry there (nothing published yet)")
    if found.info is not None and found.info.signed and public_key is None:
        raise RegistryError(f"{store.url} is a signed registry: give --public-key PUB.pem (or {PUBLIC_KEY_ENV})")
    trusted = None
    if public_key is not None:
        from ..cache.signing import public_key_id
        trusted = public_key_id(public_key)
    choice = choose(found.records, planned_units(spec), machine, misses, trusted)
    return choice, tuple(found.warnings) + choice.warnings


# the claims compared, as messages name them (index.claims' keys are the Entry's field names)
_CLAIMED = {"units": "units", "tp": "TP", "targets": "targets", "entries": "entries"}


def _claims(record: index.Entry) -> dict[str, object]:
    """What an entry says of its bundle's manifest."""
    said = {k: getattr(record, k) for k in _CLAIMED} | {"units": tuple(sorted(record.units))}
    return {"manifest digest": record.manifest_digest, **{_CLAIMED[k]: v for k, v in said.items()}}


def _holds(m: Manifest) -> dict[str, object]:
    """The same, read from the manifest itself, as publish derives the entry's claims (index.claims)."""
    return {"manifest digest": m.digest(), **{_CLAIMED[k]: v for k, v in index.claims(m).items()}}


def _shown(value: object) -> str:
    value = list(value) if isinstance(value, tuple) else value   # shown as a list: [1, 2]
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    if isinstance(value, list) and len(value) > 3:
        return f"{len(value)} ({', '.join(map(str, value[:2]))}, ...)"
    return str(value)


def bind(record: index.Entry, units: list[str], machine: Machine, misses: Callable[[index.Entry], list[str]],
         where: str) -> Callable[[Manifest], None]:
    """The check a fetched bundle's manifest must pass before a file of it is written: what its index entry claims
    (digest, units, TP, targets, entries, fingerprint) and what the request asked for (every planned unit, and the
    rule select.unfit applies: compute capability, emulated or not, the disk keys' Triton, Python, ptxas, env).
    RegistryError naming both sides otherwise: an entry edited to name another bundle installs nothing."""
    def check(m: Manifest) -> None:
        held, claimed = _holds(m), _claims(record)
        for what, value in claimed.items():
            if held[what] != value:
                raise RegistryError(f"{where} does not match its index entry {record.path}: {what} "
                                    f"{_shown(held[what])} in the bundle, {_shown(value)} in the entry; "
                                    "nothing installed")
        fp = m.fingerprint
        if fp != record.fingerprint:
            theirs = record.fingerprint.model_dump()
            ours = fp.model_dump() if fp is not None else {}
            diff = next((k for k in theirs if ours.get(k) != theirs[k]), "fingerprint")
            raise RegistryError(f"{where} does not match its index entry {record.path}: {diff} "
                                f"{ours.get(diff)!s:.80} in the bundle, {theirs.get(diff)!s:.80} in the entry; "
                                "nothing installed")
        lacking = sorted(set(units) - {u.id for u in m.units.values() if u.status == "done"})
        # the manifest as an entry: the request's rule judges what is installed, not what the index says
        reason = unfit(record.model_copy(update={"fingerprint": fp}), machine, misses) if not lacking else None
        if lacking or reason:
            raise RegistryError(f"{where} does not serve the request: "
                                + (f"it lacks the planned unit {lacking[0]}" if lacking else str(reason))
                                + "; nothing installed")
    return check


def fetch(url: str, cache_dir: str | os.PathLike, spec: BuildSpec, machine: Machine,
          public_key=None) -> FetchReport:
    """Import the bundle for `machine` and `spec` into `cache_dir` (absent or empty). With a key, a bundle whose
    signature is not the key's though its entry says so is skipped for the next older one of its slot, with a
    note. A failure leaves nothing this call created (the dir's parents included)."""
    started = time.monotonic()
    root = location.normalize(cache_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise CacheDirError(f"{root} exists and is not an empty directory: fetch into a new dir")
    misses = Here().misses   # one per fetch: it runs ptxas once per compute capability
    choice, warnings = _choice(url, spec, machine, public_key, misses)
    store = open_store(url)
    cap = settings.current().max_bundle_bytes
    created = Created()
    with created.undone_on_error():
        created.dirs(root.parent)
        candidates = (choice.record, *choice.older)
        for i, record in enumerate(candidates):
            try:
                files = _fetch_one(store, record, root, bind(record, planned_units(spec), machine, misses,
                                                             _where(store.url, record)), public_key, cap)
            except BundleSignatureError as e:
                if i + 1 == len(candidates):
                    raise
                warnings += (f"skipped {record.bundle_sha256[:12]}, its entry names a signer its bundle does not "
                             f"have ({e})",)
                continue
            return FetchReport(record=record, cache_dir=root, warnings=warnings,
                               seconds=time.monotonic() - started, files=files)
    raise AssertionError("unreachable: the last candidate returns or raises")


def _where(url: str, record: index.Entry) -> str:
    """A bundle as messages name it: its registry URL (never the temp path it is downloaded to)."""
    return f"{url.rstrip('/')}/{record.bundle}"


def _fetch_one(store: Store, record: index.Entry, root: Path, accept: Callable[[Manifest], None], public_key,
               cap: int) -> int:
    """Download `record`'s bundle next to `root` and import it there; the files imported."""
    where = _where(store.url, record)
    if record.bundle_bytes > cap:   # before a byte is downloaded: the entry's claim is the download's cap
        raise RegistryError(f"{where}: its index entry claims {record.bundle_bytes} bytes, more than the {cap} a "
                            "fetch downloads (AUTOTUNE_CACHE_MAX_BUNDLE_BYTES); nothing downloaded")
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.fetch-") as tmp:
        local = Path(tmp) / "bundle.tar.gz"
        store.get_file(record.bundle, local, record.bundle_bytes)
        if sha256_file(local) != record.bundle_sha256:
            raise RegistryError(f"{store.url}: {record.bundle} does not have the sha256 its index entry names "
                                "(damaged or replaced); nothing imported")
        return bundle_mod.import_bundle(local, root, public_key=public_key, accept=accept, name=where,
                                        max_bytes=cap).files
