"""What a registry holds: `registry.json` (format, whether its bundles must be signed), the bundles under
`bundles/<sha256>.tar.gz`, and one index entry per bundle under `index/<gpu type>/<slot>/<sha256>.json`.

The index is the listing of `index/`, not one object that publishers update: each publisher writes its bundle,
then its own entry, under names derived from the bundle's bytes, and never rewrites an object. Two publishers
racing write different names (both kept) or, publishing the same bytes, the same name with the same meaning;
there is no read-modify-write to lose. A reader lists `index/` once (S3 listings are strongly consistent since
2020; a directory listing on a file system) and sees every entry whose write finished, each pointing at a bundle
written before it. A `slot` groups the entries that serve the same machines and units (the fingerprint's disk-key
parts, Python, GPU name, kernel packages, unit ids): several bundles in one slot are rebuilds, the newest wins.

Entries are attacker input (whoever can write the registry): parsed with a size cap through bounded_json.json_value,
their bundle path must be the one their sha256 names, and a bad entry is a warning of the scan, not a crash.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .. import bounded_json
from ..cache.files import sha256_bytes
from ..cache.fingerprint import Fingerprint
from ..errors import RegistryError
from .store import Store

if TYPE_CHECKING:
    from ..cache.manifest import Manifest

INFO_NAME = "registry.json"
INFO_FORMAT: Final = "autotune-cache-registry"
ENTRY_FORMAT: Final = "autotune-cache-registry-entry"
VERSION = 1
MAX_ENTRY_BYTES = 1 << 20   # an entry with a few hundred unit ids is a few KB
MAX_ENTRIES = 100_000       # 7 models x 4 TP x 4 GPU types x rebuilds: hundreds
_SHA = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RegistryInfo(BaseModel):
    """registry.json. Example: {"format": "autotune-cache-registry", "version": 1, "signed": true}."""
    model_config = ConfigDict(frozen=True, extra="ignore")
    format: Literal["autotune-cache-registry"] = INFO_FORMAT
    version: int = VERSION
    # Whether fetch must be given a public key. A consumer's own key is what makes a fetch trusted; this only stops
    # a consumer that forgot it (whoever can write the registry can also rewrite this file).
    signed: bool = False


class Entry(BaseModel):
    """One published bundle. Example: qwen3.5-9b at TP 1 on an H200, 2 units, 3.4 MB, signed by key 1f2e..."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["autotune-cache-registry-entry"] = ENTRY_FORMAT
    version: int = VERSION
    bundle: str                      # "bundles/<bundle_sha256>.tar.gz"
    bundle_sha256: str
    bundle_bytes: int
    manifest_digest: str
    gpu_type: str                    # "H200": the GPU type it was built for (Ray's accelerator type), for `--gpu-name`
    model: str | None = None         # a label ("qwen3.5-9b"); what a fetch matches is `units`
    tp: tuple[int, ...]
    targets: tuple[str, ...]
    units: tuple[str, ...]           # ids of the units done in it (builder/plan.py unit_id: shape, dtypes, tokens)
    entries: int
    fingerprint: Fingerprint
    signed_by: str | None = None     # manifest.sig's key id, as the bundle claims it (checked at fetch with a key)
    published: str                   # ISO time
    tool_version: str

    @field_validator("bundle_sha256", "manifest_digest")
    @classmethod
    def _sha(cls, v):
        if not _SHA.match(v):
            raise ValueError("not a sha256 hex digest")
        return v

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type(cls, v):
        if (why := gpu_type_problem(v)) is not None:
            raise ValueError(why)
        return v

    @model_validator(mode="after")
    def _bundle_path(self):
        if self.bundle != bundle_path(self.bundle_sha256):
            raise ValueError(f"bundle path must be {bundle_path(self.bundle_sha256)}")
        return self

    @property
    def slot(self) -> str:
        """Equal for bundles that serve the same machines and units: rebuilds of one another."""
        fp = self.fingerprint
        parts = [fp.key_identity(), fp.python, fp.gpu_name, fp.capability, sorted(fp.packages.items()),
                 fp.emulated, sorted(self.units)]
        return sha256_bytes(json.dumps(parts, default=list))[:20]

    @property
    def path(self) -> str:
        return f"index/{self.gpu_type}/{self.slot}/{self.bundle_sha256}.json"

    def summary(self) -> dict:
        fp = self.fingerprint
        return {"gpu_type": self.gpu_type, "gpu_name": fp.gpu_name, "capability": fp.capability,
                "model": self.model, "tp": list(self.tp), "targets": list(self.targets), "units": len(self.units),
                "entries": self.entries, "python": fp.python, "triton": fp.triton, "packages": fp.packages,
                "bundle_bytes": self.bundle_bytes, "signed_by": self.signed_by, "emulated": fp.emulated,
                "published": self.published, "bundle_sha256": self.bundle_sha256, "slot": self.slot}


def gpu_type_problem(value: str) -> str | None:
    """Why `value` cannot be a GPU type (it names a prefix of the index: index/<gpu type>/...), None if it can."""
    if not _NAME.match(value):
        return "a GPU type is letters, digits, '.', '_' or '-' (at most 64), e.g. H200"
    return None


def claims(m: Manifest) -> dict[str, object]:
    """What an entry says of its bundle's manifest, read from the manifest: its done units (sorted), their TP degrees
    and targets, its entry count, under the Entry's field names. publish writes them into the entry; a fetch
    requires the bundle it downloads to give them again (fetch.bind)."""
    done = sorted((u for u in m.units.values() if u.status == "done"), key=lambda u: u.id)
    return {"units": tuple(u.id for u in done), "tp": tuple(sorted({t for u in done for t in u.tp})),
            "targets": tuple(sorted({u.target for u in done})), "entries": len(m.entries)}


def bundle_path(sha: str) -> str:
    return f"bundles/{sha}.tar.gz"


@dataclass(frozen=True)
class IndexScan:
    """One listing of a registry: its info (None: nothing published yet), every readable entry, and a warning for
    each entry that is not."""
    url: str
    info: RegistryInfo | None
    records: tuple[Entry, ...]
    warnings: tuple[str, ...] = field(default=())


def read_info(store: Store) -> RegistryInfo | None:
    data = store.get(INFO_NAME, MAX_ENTRY_BYTES)
    if data is None:
        return None
    try:
        return RegistryInfo.model_validate(bounded_json.json_value(data))
    except (ValueError, ValidationError) as e:
        raise RegistryError(f"{store.url}: {INFO_NAME} is not a registry's "
                            f"({bounded_json.one_line(e)[:200]})") from None


def ensure_info(store: Store, signed: bool) -> RegistryInfo:
    """registry.json, created by the first publisher (create-if-absent: a racing first publisher's stays)."""
    info = read_info(store)
    if info is None:
        store.create(INFO_NAME, RegistryInfo(signed=signed).model_dump_json(indent=1).encode())
        info = read_info(store)
    if info is None:
        raise RegistryError(f"{store.url}: {INFO_NAME} was written and cannot be read back")
    return info


def parse_record(data: bytes, where: str) -> Entry:
    try:
        return Entry.model_validate(bounded_json.json_value(data))
    except (ValueError, ValidationError) as e:
        msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        raise RegistryError(f"{where}: not a registry entry ({bounded_json.one_line(msg)[:200]})") from None


def scan(store: Store, gpu_type: str | None = None) -> IndexScan:
    """The registry's info and every entry (of one GPU type: one prefix listed), in one listing plus one read per
    entry."""
    info = read_info(store)
    names = [n for n in store.find(f"index/{gpu_type}" if gpu_type else "index")
             if n.endswith(".json") and not n.rsplit("/", 1)[-1].startswith(".")]
    if len(names) > MAX_ENTRIES:
        raise RegistryError(f"{store.url}: {len(names)} index entries, more than the {MAX_ENTRIES} a scan reads")
    records, warnings = [], []
    for name in names:
        try:
            data = store.get(name, MAX_ENTRY_BYTES)
            if data is None:   # deleted between the listing and the read
                continue
            rec = parse_record(data, name)
            if rec.path != name:
                raise RegistryError(f"{name}: an entry for {rec.path} (moved or edited)")
            records.append(rec)
        except RegistryError as e:
            if type(e) is not RegistryError:   # unreachable storage is no warning about one entry
                raise
            warnings.append(str(e))
    return IndexScan(url=store.url, info=info, records=tuple(records), warnings=tuple(warnings))


def write_entry(store: Store, record: Entry) -> None:
    store.put(record.path, record.model_dump_json(indent=1).encode())
