"""Serving side: point Triton at a baked cache, make the target autotuners use it, check it, count hits.

    import autotune_cache
    report = autotune_cache.install("/srv/gdn-cache")       # or AUTOTUNE_CACHE_DIR
    ... serve ...
    print(report.summary())

install() imports no kernel module and initializes no GPU (vLLM loads plugins before device init): autotuners
already imported are flipped now, later ones as they are constructed. At install the fingerprint is compared
where it is cheap (fingerprint.without_keys: versions, env vars, the Triton install's file sizes); triton_key and
ptxas (for the cache's compute capability) and the GPU's own (model, capability, ptxas for it) at the first autotune
lookup, before it reads: Triton computes triton_key and ptxas there anyway, and the server has initialized CUDA.

Before Triton is pointed at the directory, cache/trust.py decides whether it may be used (every file against the
manifest, the owners and modes, the signature: a cache is code the server runs; `verify` and `ensure` report the
same decision). A directory that fails is refused: the server tunes into a private empty cache dir instead (strict
mode: IntegrityError naming the files). A checked directory is never written by the server: misses go to an overlay
(layered.py), so it stays exactly what its manifest lists.

Triton reads the files long after the check. So by default the check's own pass copies every listed file, as its
bytes are hashed, into a private dir (0700, this user's, removed at exit; group files rewritten for its path), and
Triton reads that copy: whoever can write the original dir can no longer swap a cubin between check and load.

Whatever the directory holds, install() returns (or, strict, raises an AutotuneCacheError): nothing in it can hang
or crash the server. A check that fails in a way nobody foresaw refuses the dir, with a one-line reason.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .. import settings
from ..autotuner import disk, hooks, versions
from ..autotuner.disk import Lookup
from ..autotuner.kernels import innermost_jit, live_autotuners
from ..cache import location, trust
from ..errors import (
    AutotuneCacheError,
    CacheDirError,
    CacheMissError,
    IncompatibleCacheError,
    IntegrityError,
    SharedWritableError,
    UnsupportedTritonError,
    exception_line,
)
from . import dirs
from .report import LoaderReport

if TYPE_CHECKING:
    from ..autotuner.kernels import Autotuner
    from ..cache.fingerprint import Fingerprint

__all__ = ["LoaderReport", "install", "report"]

log = logging.getLogger("autotune_cache")

_state: dict = {}   # the one installed report of this process


def _matches(tuner: Autotuner, prefixes: Iterable[str]) -> bool:
    return _matcher(tuple(prefixes))(innermost_jit(tuner.fn).__module__ or "")


def _matcher(prefixes: tuple[str, ...]) -> Callable[[str], bool]:
    """A prefix "fla." names a module tree; one without a trailing dot names a module and its submodules."""
    starts = tuple(p if p.endswith(".") else p + "." for p in prefixes)
    exact = frozenset(p for p in prefixes if not p.endswith("."))
    return lambda module: module in exact or module.startswith(starts)


def _flip(tuner: Autotuner, report: LoaderReport) -> None:
    if disk.interpreting():
        return  # Triton never uses the disk cache under the interpreter
    tuner.cache_results = True
    fn = innermost_jit(tuner.fn)
    report.flipped.append(f"{fn.__module__}.{fn.__name__}")


def _on_new_autotuner(init: Callable[..., None], tuner: Autotuner, *args: Any, **kwargs: Any) -> None:
    """Autotuners constructed from now on (modules imported later) get cache_results on as well."""
    init(tuner, *args, **kwargs)
    current = _state.get("report")
    if current is not None and _matches(tuner, current.prefixes):
        _flip(tuner, current)


def _check_integrity(report: LoaderReport, *, require_manifest: bool, allow_shared_writable: bool,
                     public_key: str | os.PathLike | bytes | None, copy: bool = False) -> None:
    """Act on trust.assess(): on any refusal, refuse the dir (strict: raise). `copy`: the check's pass also writes
    the private copy Triton then reads (report.copy_dir)."""
    copy_to = dirs.copy_dir(report) if copy else None
    t = trust.assess(report.cache_dir, trust.Policy(require_manifest, allow_shared_writable, public_key),
                     copy_to=copy_to)
    report.trust, report.manifest, report.signed = t, t.manifest, t.signed
    report.files_checked, report.bytes_checked, report.verify_seconds = (t.files.hashed, t.files.bytes_hashed,
                                                                         t.files.seconds)
    report.warnings += t.warnings
    report.verified = t.verified
    done = t.files.copy
    if t.verified and done is not None and done.error is None:
        report.copy_dir, report.copy_seconds = done.dir, done.seconds
    elif copy_to is not None:   # refused, nothing checked (no manifest), or a failed copy: none of it is read
        shutil.rmtree(copy_to, ignore_errors=True)
        if t.verified and done is not None:
            report.warnings.append(f"the private copy failed ({done.error}): Triton reads {report.cache_dir} "
                                   "itself, which whoever can write it can change after the check")
    if not t.trusted:
        _refuse(report, [r.text for r in t.refusals], t.summary(), [p for r in t.refusals for p in r.paths],
                shared_writable=bool(t.of("permissions")))


def _refuse(report: LoaderReport, reasons: list[str], summary: str, files: list[str], *,
            shared_writable: bool = False) -> None:
    """Refuse the dir: strict, raise naming `files`; else the server tunes into a fresh private dir, and nothing of
    the dir (nor of its copy) is read."""
    report.refused, report.verified = reasons, False
    if report.copy_dir is not None:
        shutil.rmtree(report.copy_dir, ignore_errors=True)
        report.copy_dir = None
    if report.strict:
        error = SharedWritableError if shared_writable else IntegrityError
        raise error(f"autotune-cache strict mode: cache {report.cache_dir} refused: {summary}", files=files)
    report.private_dir = dirs.private_dir("autotune-cache-refused-")
    report.warnings.append(f"cache {report.cache_dir} refused ({summary}); serving from an empty private cache "
                           f"dir {report.private_dir} instead: kernels are tuned in this process")
    log.warning("autotune-cache: %s", report.warnings[-1])


def _built(report: LoaderReport) -> Fingerprint | None:
    """The fingerprint to compare: none without a manifest, or for a refused dir (nothing of it is used)."""
    return report.manifest.fingerprint if report.manifest and report.private_dir is None else None


def _check_fingerprint(report: LoaderReport, here: Callable[[Fingerprint], Fingerprint], when: str) -> None:
    """Compare the cache's fingerprint with `here(built)`: report each new mismatch (the cache stays pointed at:
    with a fingerprint that differs, Triton's own keys differ and simply miss) and, strict, raise."""
    from ..cache import fingerprint
    built = _built(report)
    if built is None:
        return
    try:
        found = fingerprint.mismatches(built, here(built))
    except Exception as e:   # a fingerprint nobody foresaw (the manifest's, or this machine's): no proof it fits
        found = [f"the fingerprints cannot be compared ({exception_line(e)})"]
    found = [m for m in found if m not in report.mismatches]
    report.mismatches += found
    for m in found:
        log.warning("autotune-cache: %s may miss here: %s", report.cache_dir, m)
    if found and report.strict:
        raise IncompatibleCacheError(f"cache {report.cache_dir} does not fit this environment ({when}): "
                                     + "; ".join(found))


def _check_at_install(report: LoaderReport) -> None:
    """What install() compares, before Triton is pointed (strict: an unfit cache is never used). Python, the Triton
    version, its cheap identity (fingerprint.triton_files), torch, packages, env vars; triton_key and ptxas are left
    to the first lookup (report.keys_deferred), where Triton computes them itself: at install() they were 0.37 s of
    hashing libtriton plus a ptxas run, in every process, even those that never look anything up. A manifest written
    before triton_files existed gets today's full check here instead: without that identity, nothing at install
    could tell another wheel of the same version."""
    from ..cache import fingerprint
    built = _built(report)
    if built is None:
        return
    if built.triton_files is None:
        _check_fingerprint(report, lambda b: fingerprint.here(b, query_gpu=False)[0], "at install")
    else:
        report.keys_deferred = True
        _check_fingerprint(report, fingerprint.without_keys, "at install")


def _check_at_first_lookup(report: LoaderReport) -> None:
    """The first autotune lookup, before it reads anything: triton_key and ptxas if install() deferred them, then
    the GPU's own fingerprint (model, capability, ptxas for it), now that the server has initialized CUDA."""
    from ..cache import fingerprint
    if report.keys_deferred:
        report.keys_deferred = False
        _check_fingerprint(report, lambda b: fingerprint.with_keys(b)[0], "at the first autotune lookup")
    _check_fingerprint(report, lambda b: fingerprint.collect(emulated=b.emulated), "at the first autotune lookup")


def install(cache_dir: str | os.PathLike | None = None, *, targets: Iterable[str] | None = None,
            strict: bool | None = None, modules: Iterable[str] = (), log_at_exit: bool | None = None,
            require_manifest: bool | None = None, allow_shared_writable: bool | None = None,
            public_key: str | os.PathLike | bytes | None = None, copy: bool | None = None,
            record: str | os.PathLike | None = None, misses: str | os.PathLike | None = None) -> LoaderReport:
    """Make the target kernels' autotuners read (and never re-tune) the cache in `cache_dir`. Returns the live
    LoaderReport (`print(report)` says what it did and the hits and misses so far; `.as_dict()` for a log line).

    `cache_dir` defaults to env AUTOTUNE_CACHE_DIR. `strict` (env AUTOTUNE_CACHE_STRICT): a miss raises
    CacheMissError naming kernel and key instead of benchmarking, an incompatible fingerprint raises
    IncompatibleCacheError, a refused directory IntegrityError naming the files (SharedWritableError for
    permissions), a Triton this tool cannot use UnsupportedTritonError. `targets`: the kernel sources whose
    autotuners are switched, by name ("fla", "vllm", "sglang": targets.registered(); default every one of them).
    `modules`: extra module prefixes whose autotuners are switched too (kernels no target describes).
    `log_at_exit` (env AUTOTUNE_CACHE_LOG; default off): log the report's summary through the "autotune_cache"
    logger when the process exits.

    The directory is refused (see the module doc) when a file differs from its manifest, is missing, foreign, a
    link; when another user owns or can write it, an entry or a parent (`allow_shared_writable` /
    AUTOTUNE_CACHE_ALLOW_WRITABLE=1 allows it); without a manifest when `require_manifest` (env
    AUTOTUNE_CACHE_REQUIRE_MANIFEST, implied by strict); with `public_key` (an ed25519 public key, PEM path or bytes;
    env AUTOTUNE_CACHE_PUBLIC_KEY; it implies a manifest) when manifest.sig is absent or does not verify; and when
    it cannot be checked at all (a manifest that is a fifo, huge, not UTF-8, ...: the reason in one line).

    `copy` (env AUTOTUNE_CACHE_COPY, default on): Triton reads a private copy of the checked files, written by the
    check's own pass (report.copy_dir, copy_seconds; it costs the cache's bytes in the temp dir, per process).
    copy=False / AUTOTUNE_CACHE_COPY=0 serves the directory itself and reopens the window between check and load:
    whoever can write the directory can then swap a file after install() returned and before Triton reads it.

    `record` (env AUTOTUNE_CACHE_RECORD): append every autotune lookup of this process to that file; `misses` (env
    AUTOTUNE_CACHE_MISSES): only those not found in the cache, what the server still tuned. Either file is a record
    (autotune_cache/record/): `autotune-cache build --from-record FILE` builds exactly those keys.

    Raises only AutotuneCacheError: CacheDirError for a `cache_dir` that is no directory, for an unknown target,
    and, strict, the refusals and mismatches above. Whatever the directory holds, a non-strict install() returns.
    """
    env = settings.current()
    cache_dir = cache_dir or env.dir
    if not cache_dir:
        raise CacheDirError("no cache dir: pass one or set AUTOTUNE_CACHE_DIR")
    root = location.normalize(cache_dir)
    if not root.is_dir():
        raise CacheDirError(f"cache dir {root} does not exist or is not a directory")
    if strict is None:
        strict = env.strict
    if copy is None:
        copy = env.private_copy
    policy = trust.policy_from_env(require_manifest=True if strict and require_manifest is None else require_manifest,
                                   allow_shared_writable=allow_shared_writable, public_key=public_key)
    from .. import targets as targets_mod
    known = {t.name: t for t in targets_mod.registered()}
    targets = tuple(known) if targets is None else tuple(targets)
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise AutotuneCacheError(f"unknown target(s) {unknown}; known: {', '.join(known)}")
    prefixes = tuple(p for t in targets for p in known[t].module_prefixes) + tuple(modules)
    report = LoaderReport(root, prefixes, strict)
    if not _triton_supported(report):
        return report
    from ..record import recorder
    for path, only_misses in ((record or env.record, False), (misses or env.misses, True)):
        if path:
            report.recording.append(str(recorder.start(path, misses=only_misses).path))
    # The collector is the server's: no gc.collect() here (a full collection of a server's start-up heap, 0.1-0.2 s
    # at a million objects, is the very cost install() must not have) and no gc.freeze() (it keeps forever whatever
    # cyclic garbage exists at that moment, and where the start-up heap ends is the server's to know: vLLM's engine
    # freezes it after its own start-up, and its model loader collects after loading the weights, between this call
    # and the first kernel call). What install() owes is to allocate little: it hashes no libtriton, scans the heap
    # only when a target module is imported, parses no email headers (docs/serving.md, "install() and the collector").
    try:
        _use(report, policy, copy)
    except AutotuneCacheError:
        raise
    except Exception as e:   # the temp dir, Triton itself: nothing of the cache, yet the server must hear it typed
        raise AutotuneCacheError(f"autotune-cache: install({root}) failed: {exception_line(e)}") from e
    if log_at_exit or (log_at_exit is None and env.log):
        atexit.register(lambda: log.warning("%s", report.summary()))
    return report


def _triton_supported(report: LoaderReport) -> bool:
    """The Triton here against the versions this tool supports (autotuner/versions.py): a newer one is a warning;
    an unsupported one (strict: raises) leaves Triton untouched, the cache unread, and the report says why."""
    supported = versions.support()
    if supported.warning:
        report.warnings.append(supported.warning)
        log.warning("autotune-cache: %s", supported.warning)
    if supported.refusal is None:
        return True
    if report.strict:
        raise UnsupportedTritonError(f"autotune-cache strict mode: {supported.refusal}")
    report.refused = [supported.refusal]
    log.warning("autotune-cache: %s; %s is not used and Triton is left as it is", supported.refusal, report.cache_dir)
    return False


def _use(report: LoaderReport, policy: trust.Policy, copy: bool) -> None:
    """Check the dir (and copy it), then point Triton at what passed and switch the autotuners."""
    try:
        _check_integrity(report, require_manifest=policy.require_manifest,
                         allow_shared_writable=policy.allow_shared_writable, public_key=policy.public_key, copy=copy)
    except AutotuneCacheError:
        raise
    except Exception as e:   # trust.assess refuses what it cannot check; this is the loader's own step failing
        reason = f"{report.cache_dir}: cannot be checked ({exception_line(e)})"
        _refuse(report, [reason], reason, [str(report.cache_dir)])
    _check_at_install(report)   # before Triton is pointed: strict, an unfit cache is never used
    dirs.point_triton_at(report, policy.allow_shared_writable)
    _hook(report)


def _recorded_modules(report: LoaderReport) -> tuple[str, ...]:
    """The kernel modules of the units a build replayed from records (builder/replay_unit.py): their autotuners
    read the cache as the targets' do."""
    if report.manifest is None or report.private_dir is not None:
        return ()
    return tuple(dict.fromkeys(u.shape["module"] for u in report.manifest.units.values()
                               if u.target == "record" and isinstance(u.shape.get("module"), str)
                               and u.shape["module"] not in report.prefixes))


def _hook(report: LoaderReport) -> None:
    """Switch the target autotuners (live and future) to the disk cache, count their lookups, finish the fingerprint
    check at the first one (before it reads) and, strict, fail a miss."""
    _state["report"] = report
    report.prefixes += _recorded_modules(report)
    hooks.add("serve", "__init__", _on_new_autotuner)
    # An autotuner's kernel module is imported before the autotuner exists: with none of the prefixes' modules in
    # sys.modules there is nothing to switch, and the scan of every object of the process (60 ms at 400k objects,
    # what torch and vLLM leave when the vLLM plugin installs) is skipped.
    if any(map(_matcher(report.prefixes), tuple(sys.modules))):
        for tuner in live_autotuners():
            if _matches(tuner, report.prefixes):
                _flip(tuner, report)

    first = threading.Lock()
    checked: list[BaseException | None] = []   # once done: [None], or [the strict refusal every lookup raises]

    def before_lookup(tuner: Autotuner, key: tuple) -> None:
        if _state.get("report") is not report:
            return
        if not checked:
            with first:   # other threads' first lookups wait for the check: none reads the cache before it
                if not checked:
                    try:
                        _check_at_first_lookup(report)
                        checked.append(None)
                    except AutotuneCacheError as e:   # strict: this lookup and every later one fail, none reads
                        checked.append(e)
        if checked[0] is not None:
            raise checked[0]

    def on_lookup(lookup: Lookup) -> None:
        if _state.get("report") is report:
            report.record(lookup)

    def on_miss(tuner: Autotuner, key: tuple) -> None:
        if _state.get("report") is report and report.strict:
            kernel = innermost_jit(tuner.fn).__name__
            report.record(Lookup(kernel=kernel, key=tuple(key), configs=len(tuner.configs), hit=False, path=None))
            raise CacheMissError(f"autotune-cache strict mode: {kernel} would be "
                                 f"benchmarked for key {tuple(key)}: it is not in {report.cache_dir}")

    disk.add_before_lookup_hook(before_lookup, phase="serve")
    disk.add_listener(on_lookup, phase="serve")
    disk.add_miss_hook(on_miss, phase="serve")   # after the recorder's (hooks.PHASES): it may raise


def report() -> LoaderReport | None:
    """The report of the install() of this process, if any."""
    return _state.get("report")
