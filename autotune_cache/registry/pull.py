"""At pod start: fetch the registry's cache when the local one is missing or stale (`ensure --from URL`, the vLLM
plugin with AUTOTUNE_CACHE_URL).

Stale: a planned unit not done or its entry file changed (Manifest.damaged_entry), or a fingerprint whose disk
keys differ here (fingerprint.misses_here, without the GPU). The N processes of one node (TP workers, the engine
core) take one file lock beside the cache dir (`.<name>.fetch.lock` in its parent): the first fetches, the others
wait and then find it fresh. A stale dir is moved aside (`.<name>.stale-<pid>`) before the fetch and removed after
it; on a failed fetch it is moved back. A registry that cannot be reached or holds nothing for this machine is an
error when strict, else a warning and the local dir stays as it was (the server then tunes what it misses). A
failed fetch takes away what the pull created (files.Created): the dir's parents and the lock file, if it made them.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from .. import settings
from ..builder.plan import plan as make_plan
from ..builder.spec import BuildSpec
from ..cache import fingerprint, location
from ..cache import manifest as manifest_mod
from ..cache.files import Created
from ..cache.location import CacheDir
from ..errors import AutotuneCacheError, CacheDirError, RegistryError
from .fetch import fetch
from .select import Machine

LOCK_TIMEOUT_S = 1800.0   # a bundle of a few MB takes seconds; a stuck fetcher must not hang a pod forever


@dataclass
class PullReport:
    cache_dir: Path
    action: str                  # "fresh" | "fetched" | "fetched-by-another" | "fallback"
    stale: list[str] = field(default_factory=list)    # why the local cache was not used as it was
    warnings: list[str] = field(default_factory=list)
    bundle_sha256: str | None = None

    def as_dict(self) -> dict:
        return {"cache_dir": str(self.cache_dir), "action": self.action, "stale": self.stale,
                "warnings": self.warnings, "bundle_sha256": self.bundle_sha256}


def why_stale(cache_dir: Path, spec: BuildSpec) -> list[str]:
    """Why the cache in `cache_dir` would not serve `spec` here; empty when it would."""
    try:
        m = manifest_mod.load(cache_dir) if cache_dir.is_dir() else None
    except CacheDirError as e:
        return [str(e)]
    if m is None:
        return [f"{cache_dir}: no cache"]
    out = []
    for unit in make_plan(spec).units:
        rec = m.units.get(unit.id)
        if rec is None or rec.status != "done":
            out.append(f"{unit.id}: {'not built' if rec is None else rec.status}")
        elif (name := m.damaged_entry(rec, cache_dir)) is not None:
            out.append(f"{unit.id}: entry {name} missing or changed")
    if m.fingerprint is not None:
        out += fingerprint.misses_here(m.fingerprint, query_gpu=False)[0]
    return out


def pull(url: str, cache_dir: str | os.PathLike, spec: BuildSpec, machine: Machine | None, *, public_key=None,
         strict: bool = False, lock_timeout: float = LOCK_TIMEOUT_S, allow_emulated: bool = False) -> PullReport:
    """Make `cache_dir` hold the registry's cache for `spec` unless it serves already. `machine` None: detected
    when a fetch is needed (machine.detect, isolated: no CUDA call in this process)."""
    root = location.normalize(cache_dir)
    stale = why_stale(root, spec)
    if not stale:
        return PullReport(root, "fresh")
    # what this call makes beside the cache dir (its parents, the lock file) goes again when no cache came of it
    created = Created()
    with created.undone_on_error():
        report = _pull_locked(url, root, spec, machine, stale, created, public_key=public_key, strict=strict,
                              lock_timeout=lock_timeout, allow_emulated=allow_emulated)
    if report.action == "fallback":
        created.undo()
    return report


def _pull_locked(url: str, root: CacheDir, spec: BuildSpec, machine: Machine | None, stale: list[str],
                 created: Created, *, public_key, strict: bool, lock_timeout: float,
                 allow_emulated: bool) -> PullReport:
    created.dirs(root.parent)
    lock_path = root.parent / f".{root.name}.fetch.lock"
    # a waiter on a lock file that a failure then removes takes it on the old file; import's own lock on the cache
    # dir (and its empty-dir rule) still lets one fetch write it
    created.file_if_new(lock_path)
    lock = filelock.FileLock(lock_path, mode=0o644)
    try:
        lock.acquire(timeout=lock_timeout)
    except filelock.Timeout:
        raise RegistryError(f"{root}: another process has been fetching for {lock_timeout:g} s "
                            f"({lock.lock_file})") from None
    try:
        if not why_stale(root, spec):   # another worker fetched while we waited
            return PullReport(root, "fetched-by-another", stale)
        aside = None
        if root.exists():
            aside = root.parent / f".{root.name}.stale-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(root, aside)
        try:
            if machine is None:
                from .machine import detect
                machine = detect(isolated=True, allow_emulated=allow_emulated)
            got = fetch(url, root, spec, machine, public_key=public_key)
        except AutotuneCacheError as e:
            if aside is not None:
                shutil.rmtree(root, ignore_errors=True)
                os.replace(aside, root)
            if strict:
                raise
            return PullReport(root, "fallback", stale, [f"no cache fetched from {url}: {e}"])
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return PullReport(root, "fetched", stale, list(got.warnings), got.record.bundle_sha256)
    finally:
        lock.release()


def spec_from_env() -> BuildSpec:
    """The request the entrypoint and the plugin read: AUTOTUNE_CACHE_MODEL (or AUTOTUNE_CACHE_CONFIG),
    AUTOTUNE_CACHE_TP, AUTOTUNE_CACHE_TARGET, AUTOTUNE_CACHE_MAX_TOKENS (defaults qwen3.5-9b, 1, fla, 16384); a
    bad TP or token count is a SpecError naming its variable."""
    from .. import shapes
    env = settings.current()
    shape = shapes.resolve(env.model, str(env.config) if env.config is not None else None)
    return BuildSpec(model=shape, tp=env.tp, targets=env.target, max_tokens=env.max_tokens)


def pull_for_server(log) -> PullReport | None:
    """The vLLM plugin's hook: with AUTOTUNE_CACHE_URL and AUTOTUNE_CACHE_DIR set, pull() for the request in the
    env (spec_from_env), strict per AUTOTUNE_CACHE_STRICT, key from AUTOTUNE_CACHE_PUBLIC_KEY; logged."""
    env = settings.current()
    url, cache_dir = env.url, env.dir
    if not url or cache_dir is None:
        return None
    strict = env.strict
    try:
        report = pull(url, cache_dir, spec_from_env(), None, strict=strict,
                      public_key=env.public_key)
    except AutotuneCacheError as e:
        if strict:
            raise
        log.error("autotune-cache: no cache fetched from %s (%s)", url, e)
        return None
    for w in report.warnings:
        log.warning("autotune-cache: %s", w)
    if report.action != "fresh":
        log.info("autotune-cache: %s: %s from %s", report.cache_dir, report.action, url)
    return report


def pull_for_ensure(url: str, cache_dir: Path, spec: BuildSpec, public_key, console,
                    allow_emulated: bool = False) -> PullReport:
    """`ensure --from URL`: pull() for ensure's request, strict per AUTOTUNE_CACHE_STRICT; what it did on stderr."""
    report = pull(url, cache_dir, spec, None, strict=settings.current().strict, public_key=public_key,
                  allow_emulated=allow_emulated)
    for w in report.warnings:
        console.print(f"[yellow]warning[/yellow]: {w}")
    if report.action != "fresh":
        console.print(f"ensure: {report.action} from {url}" + (f" (bundle {report.bundle_sha256[:12]})"
                                                              if report.bundle_sha256 else ""))
    return report
