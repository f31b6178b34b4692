"""The registry's storage, through fsspec: one URL (`file:///srv/reg`, `s3://bucket/gdn`, `gs://...`, `hf://...`)
and the few operations the registry needs, each turning the backend's own exceptions into RegistryError
(RegistryUnreachableError when the storage did not answer at all).

Every object the registry writes is written once under a name derived from its content and never rewritten, so
two publishers never write one name with different bytes: that is what makes the index race-free (index.py). A
single object write is atomic on object stores (S3 PUT, GCS upload: a reader sees the old object or the whole new
one); on a local or mounted file system fsspec writes in place, so here it goes to a temp name first and is
renamed over (same dir, os.replace). `create` (registry.json, the one object whose name is not content-derived) is
create-if-absent: os.link on a file system, `If-None-Match: *` (fsspec's mode="create") on object stores.

Storage options come from fsspec's own configuration: env vars `FSSPEC_S3_ENDPOINT_URL=...` (any
`FSSPEC_<PROTOCOL>_<OPTION>`), or the backend's (AWS_* for s3fs).
"""
from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .. import settings
from ..cache import files
from ..errors import RegistryError, RegistryUnreachableError, printable

if TYPE_CHECKING:   # fsspec is optional ([fleet], [s3]) and imported by open_store only
    from fsspec import AbstractFileSystem

BLOCK = 1 << 20


def _fail(url: str, what: str, e: BaseException) -> RegistryError:
    if isinstance(e, RegistryError):
        return e
    if isinstance(e, (PermissionError, ValueError, TypeError)):
        return RegistryError(f"{url}: cannot {what} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    first = str(e).splitlines()[0] if str(e) else ""
    return RegistryUnreachableError(f"{url}: cannot {what} ({type(e).__name__}: {first[:200]})")


@dataclass
class Store:
    """One registry root. `url` as the user gave it; `fs` the fsspec filesystem; `root` its path there."""
    url: str
    fs: AbstractFileSystem
    root: str

    @property
    def local(self) -> bool:
        return "file" in _protocols(self.fs)

    def path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    def _local_target(self, rel: str) -> Path:
        """Object `rel` of a file:// store as a path, its parent dirs made."""
        target = Path(self.path(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def put(self, rel: str, data: bytes) -> None:
        """Write `data` as object `rel`, whole or not at all."""
        try:
            if self.local:
                files.write_atomic(self._local_target(rel), data)
            else:
                self.fs.pipe_file(self.path(rel), data)
        except Exception as e:  # noqa: BLE001 - every backend has its own exceptions
            raise _fail(self.url, f"write {rel}", e) from None

    def put_file(self, rel: str, local_path: Path) -> None:
        """Upload a local file as object `rel`, whole or not at all."""
        try:
            if self.local:
                import shutil
                with open(local_path, "rb") as src, files.atomic_file(self._local_target(rel)) as dst:
                    shutil.copyfileobj(src, dst)
            else:
                self.fs.put_file(str(local_path), self.path(rel))
        except Exception as e:  # noqa: BLE001
            raise _fail(self.url, f"upload {rel}", e) from None

    def create(self, rel: str, data: bytes) -> bool:
        """Write `rel` only if no object has that name; False when one had (its content is the first writer's)."""
        try:
            if self.local:
                target = self._local_target(rel)
                tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
                tmp.write_bytes(data)
                try:
                    os.link(tmp, target)   # fails if the name exists: create-if-absent, and never half written
                except FileExistsError:
                    return False
                finally:
                    tmp.unlink()
                return True
            self.fs.pipe_file(self.path(rel), data, mode="create")
            return True
        except FileExistsError:
            return False
        except Exception as e:  # noqa: BLE001
            if "PreconditionFailed" in str(e) or "412" in str(e):   # S3 answers 412 when the name exists
                return False
            raise _fail(self.url, f"write {rel}", e) from None

    def get(self, rel: str, limit: int) -> bytes | None:
        """The bytes of object `rel`, None if there is none; RegistryError past `limit` bytes."""
        try:
            with self.fs.open(self.path(rel), "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001
            raise _fail(self.url, f"read {rel}", e) from None
        if len(data) > limit:
            raise RegistryError(f"{self.url}: {rel} is larger than {limit} bytes, the most it may be")
        return data

    def get_file(self, rel: str, dest: Path, limit: int) -> int:
        """Copy object `rel` into the new local file `dest`, at most `limit` bytes; returns the bytes copied."""
        n = 0
        try:
            with self.fs.open(self.path(rel), "rb") as f, open(dest, "xb") as out:
                while block := f.read(BLOCK):
                    n += len(block)
                    if n > limit:
                        raise RegistryError(f"{self.url}: {rel} is larger than its index entry says ({limit} bytes)")
                    out.write(block)
        except FileNotFoundError:
            raise RegistryError(f"{self.url}: {rel} is listed in the index but missing") from None
        except Exception as e:  # noqa: BLE001
            raise _fail(self.url, f"download {rel}", e) from None
        return n

    def exists(self) -> bool:
        """Whether the root is there (a directory, a bucket, or a prefix with objects), even with nothing in it."""
        try:
            return bool(self.fs.isdir(self.root))
        except Exception as e:  # noqa: BLE001
            raise _fail(self.url, "list the registry", e) from None

    def find(self, prefix: str) -> list[str]:
        """Every object under `prefix`, relative to the root, sorted (one listing: S3 ListObjectsV2 pages)."""
        base = self.path(prefix).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        except Exception as e:  # noqa: BLE001
            raise _fail(self.url, f"list {prefix}", e) from None
        root = self.fs._strip_protocol(self.root).rstrip("/") + "/"
        return sorted(p[len(root):] for p in found if p.startswith(root))


@dataclass(frozen=True)
class Partial:
    """An abandoned write in a registry: a half-written object (`bundles/.<name>.<random>.tmp`, left by a publish
    killed while writing to a file system) or an incomplete S3 multipart upload (`upload_id`), `age_s` old."""
    rel: str
    age_s: float
    upload_id: str | None = None

    def as_dict(self) -> dict:
        return {"object": self.rel, "age_s": round(self.age_s), "multipart_upload": self.upload_id is not None}


def partials(store: Store, older_than: float) -> list[Partial]:
    """The registry's abandoned writes older than `older_than` seconds (younger ones may be a publish at work)."""
    now = time.time()
    found = []
    for rel in store.find(""):
        name = rel.rsplit("/", 1)[-1]
        if name.startswith(".") and name.endswith(".tmp"):
            try:
                age = now - store.fs.modified(store.path(rel)).timestamp()
            except FileNotFoundError:
                continue
            except Exception as e:  # noqa: BLE001
                raise _fail(store.url, f"read the age of {rel}", e) from None
            if age >= older_than:
                found.append(Partial(rel, age))
    if "s3" in _protocols(store.fs):
        prefix = _bucket_and_key(store)[1].rstrip("/")
        for u in _uploads(store):
            key, when = u.get("Key", ""), u.get("Initiated")
            age = now - when.timestamp() if isinstance(when, datetime) else 0.0   # undated: maybe at work, kept
            if key.startswith(f"{prefix}/" if prefix else "") and age >= older_than:
                found.append(Partial(key[len(prefix) + 1:] if prefix else key, age, u["UploadId"]))
    return found


def _uploads(store: Store, pages: int = 100) -> list[dict]:
    """The unfinished multipart uploads under an s3:// store's root (ListMultipartUploads, 1000 a page)."""
    bucket, prefix = _bucket_and_key(store)
    marker: dict = {}
    out: list[dict] = []
    try:
        for _ in range(pages):
            page = store.fs.call_s3("list_multipart_uploads", Bucket=bucket,
                                    Prefix=f"{prefix.rstrip('/')}/" if prefix else "", **marker)
            out += page.get("Uploads", [])
            if not page.get("IsTruncated"):
                break
            marker = {"KeyMarker": page.get("NextKeyMarker", ""), "UploadIdMarker": page.get("NextUploadIdMarker", "")}
    except Exception as e:  # noqa: BLE001
        raise _fail(store.url, "list unfinished multipart uploads", e) from None
    return out


def _bucket_and_key(store: Store, rel: str = "") -> tuple[str, str]:
    """An s3:// store's bucket and the key of `rel` under its root (the root's own prefix for "")."""
    bucket, _, key = store.fs._strip_protocol(store.path(rel) if rel else store.root).partition("/")
    return bucket, key


def sweep(store: Store, older_than: float) -> list[Partial]:
    """Remove the registry's abandoned writes older than `older_than` seconds (partials(), then each removed);
    returns them. Never touches a finished object: only dot-named `.tmp` ones and unfinished uploads."""
    found = partials(store, older_than)
    for p in found:
        try:
            if p.upload_id is not None:
                store.fs.abort_mpu(*_bucket_and_key(store, p.rel), p.upload_id)
            else:
                store.fs.rm_file(store.path(p.rel))
        except FileNotFoundError:
            continue
        except Exception as e:  # noqa: BLE001
            raise _fail(store.url, f"remove the abandoned {p.rel}", e) from None
    return found


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


# The package each protocol's fsspec backend comes in (fsspec's own hint for any other).
_PACKAGES = {"s3": "pip install 'autotune-cache[s3]' (s3fs)", "s3a": "pip install 'autotune-cache[s3]' (s3fs)",
             "gs": "pip install gcsfs", "gcs": "pip install gcsfs", "hf": "pip install huggingface_hub",
             "abfs": "pip install adlfs", "az": "pip install adlfs"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.S)


def _as_url(url: str) -> str:
    """A registry URL from what the user gave: a URL, `file:/x` (a file URL without a host), or a local path."""
    if printable(url) != url or not url.strip():
        raise RegistryError(f"not a registry URL: {printable(url)[:200]!r}")
    if "://" in url:
        return url
    if m := _SCHEME.match(url):
        scheme, rest = m.group(1).lower(), m.group(2)
        if scheme == "file" and rest.startswith("/"):
            url = rest
        elif scheme in _known_protocols():
            raise RegistryError(f"{url}: not a URL; write {scheme}://{rest.lstrip('/')}")
    return Path(url).expanduser().resolve().as_uri()


def _known_protocols() -> set[str]:
    from fsspec.registry import known_implementations, registry
    return set(known_implementations) | set(registry)


def _remote_options(protocol: str) -> dict:
    """The timeouts and retries of settings.py for a backend that takes them (s3fs: botocore's Config, merged over
    what fsspec's config gives it); {} for the rest (file:// needs none)."""
    if protocol not in ("s3", "s3a"):
        return {}
    from fsspec.config import conf
    env = settings.current()
    given = dict(conf.get(protocol, {}).get("config_kwargs") or {})
    return {"config_kwargs": {**given, "connect_timeout": env.registry_connect_timeout,
                              "read_timeout": env.registry_read_timeout,
                              "retries": {"mode": "standard", "total_max_attempts": 1 + env.registry_retries}}}


def open_store(url: str) -> Store:
    """The registry at `url`; RegistryError for a URL fsspec cannot use (unknown protocol, missing backend)."""
    try:
        from fsspec.core import split_protocol, url_to_fs
        from fsspec.registry import known_implementations
    except ImportError:
        raise RegistryError("a registry needs fsspec: pip install 'autotune-cache[fleet]'") from None
    url = _as_url(url)
    protocol = (split_protocol(url)[0] or "file").lower()
    try:
        fs, root = url_to_fs(url, **_remote_options(protocol))
    except ImportError:
        hint = _PACKAGES.get(protocol) or known_implementations.get(protocol, {}).get("err") or "its fsspec backend"
        raise RegistryError(f"{url}: {protocol}:// needs a package that is not installed: {hint}") from None
    except (ValueError, TypeError) as e:
        if protocol not in _known_protocols():
            raise RegistryError(f"{url}: {printable(protocol)}:// is not a protocol fsspec supports (file://, s3://, "
                                "gs://, hf://, ...)") from None
        raise RegistryError(f"{url}: not a registry URL fsspec can open ({e})") from None
    if protocol in ("s3", "s3a"):
        fs.retries = 1   # s3fs's own loop would multiply botocore's tries (and wait its own backoff): botocore's alone
    return Store(url=url, fs=fs, root=root.rstrip("/") or "/")
