"""`autotune-cache fetch URL DIR --model M --tp T`: pick the bundle for this machine (select.py), download it next to
DIR, check its sha256 against the index entry, and import it into DIR (cache/bundle.py: every member checked,
group files rewritten for DIR, `public_key` required to have signed it). A signed registry needs a public key."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..builder.plan import plan as make_plan
from ..builder.spec import BuildSpec
from ..cache import bundle as bundle_mod
from ..cache.files import sha256_file
from ..errors import CacheDirError, RegistryError
from . import index
from .machine import Here
from .select import Machine, choose
from .store import open_store

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


def select(url: str, spec: BuildSpec, machine: Machine, public_key=None) -> tuple[index.Entry, tuple[str, ...]]:
    """The record fetch would download, and its warnings (a scan's bad entries, a GPU-name fallback)."""
    store = open_store(url)
    found = index.scan(store)
    if found.info is None and not found.records:
        raise RegistryError(f"{store.url}: no registry there (nothing published yet)")
    if found.info is not None and found.info.signed and public_key is None:
        raise RegistryError(f"{store.url} is a signed registry: give --public-key PUB.pem (or {PUBLIC_KEY_ENV})")
    choice = choose(found.records, planned_units(spec), machine, Here().misses)
    return choice.record, tuple(found.warnings) + choice.warnings


def fetch(url: str, cache_dir: str | os.PathLike, spec: BuildSpec, machine: Machine,
          public_key=None) -> FetchReport:
    """Import the bundle for `machine` and `spec` into `cache_dir` (absent or empty)."""
    started = time.monotonic()
    root = Path(cache_dir).expanduser().resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise CacheDirError(f"{root} exists and is not an empty directory: fetch into a new dir")
    record, warnings = select(url, spec, machine, public_key)
    store = open_store(url)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.fetch-"))
    try:
        local = tmp / "bundle.tar.gz"
        store.get_file(record.bundle, local, record.bundle_bytes)
        if sha256_file(local) != record.bundle_sha256:
            raise RegistryError(f"{store.url}: {record.bundle} does not have the sha256 its index entry names "
                                "(damaged or replaced); nothing imported")
        imported = bundle_mod.import_bundle(local, root, public_key=public_key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return FetchReport(record=record, cache_dir=root, warnings=warnings, seconds=time.monotonic() - started,
                       files=imported.files)
