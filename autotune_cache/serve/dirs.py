"""The directories Triton reads and writes once install() has decided: the checked dir or its private copy (read),
the overlay for misses (layered.py), a private empty dir for a refused cache. Each private dir is this user's
(0700) and removed at exit; a dir other users could replace is not used."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from .. import settings
from ..cache import integrity, location
from ..cache.files import sha256_bytes
from .report import LoaderReport

LAYERED = "autotune_cache.serve.layered:LayeredCacheManager"


def is_writable(path: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test."):
            return True
    except OSError:
        return False


def private_dir(prefix: str) -> Path:
    """A fresh empty dir only this user can read or write, removed at exit (of this process: a forked child that
    exits normally leaves it to its parent)."""
    path = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    atexit.register(_remove_if_ours, path, os.getpid())
    return path


def _remove_if_ours(path: Path, pid: int) -> None:
    if os.getpid() == pid:
        shutil.rmtree(path, ignore_errors=True)


def overlay_dir(report: LoaderReport, allow_shared_writable: bool) -> Path:
    """AUTOTUNE_CACHE_OVERLAY, default <tmp>/autotune-cache-overlay-<uid>/<hash of the cache path> (it persists,
    so a miss is tuned once per machine). The overlay is read too (the server's own earlier misses): one that
    another user owns or can write (a name pre-created in /tmp) is replaced by a fresh private dir."""
    given = settings.current().overlay
    if given:
        path: Path = location.normalize(given)
        own = [path]
    else:
        user_dir = Path(tempfile.gettempdir()) / f"autotune-cache-overlay-{os.getuid()}"
        path = user_dir / sha256_bytes(str(report.cache_dir))[:16]
        own = [user_dir, path]
    unsafe = []
    try:
        for d in own:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = d.lstat()
            if d.is_symlink() or st.st_uid != os.getuid():
                unsafe.append(f"{d} is a link or owned by uid {st.st_uid}, not this user ({os.getuid()})")
        if not allow_shared_writable:
            unsafe += map(str, integrity.writable_parents(path))
    except OSError as e:
        unsafe.append(f"{path}: {e.strerror or e}")
    if not unsafe:
        return path
    private = private_dir("autotune-cache-overlay-")
    report.warnings.append(f"overlay {path} not used ({'; '.join(unsafe)}): misses go to {private}")
    return private


def point_triton_at(report: LoaderReport, allow_shared_writable: bool) -> None:
    # TRITON_CACHE_AUTOTUNING is left alone: it would switch every autotuner of the process, not the targets'.
    if os.environ.get("TRITON_CACHE_MANAGER") == LAYERED:   # set by an earlier install() of this process
        os.environ.pop("TRITON_CACHE_MANAGER")
        os.environ.pop("AUTOTUNE_CACHE_BASE", None)
    if report.private_dir is not None:   # refused: Triton never sees the directory
        os.environ["TRITON_CACHE_DIR"] = str(report.private_dir)
        return
    served = report.copy_dir or report.cache_dir   # what Triton reads: the bytes checked
    writable = is_writable(report.cache_dir)
    if os.environ.get("TRITON_CACHE_MANAGER"):
        if not writable and report.copy_dir is None:
            report.warnings.append(f"cache dir is read-only and TRITON_CACHE_MANAGER is already "
                                   f"{os.environ['TRITON_CACHE_MANAGER']}: a miss will fail the kernel call")
        if report.verified:
            report.warnings.append(f"TRITON_CACHE_MANAGER is {os.environ['TRITON_CACHE_MANAGER']}: it decides "
                                   "what is read, which may not be the files checked here")
        os.environ["TRITON_CACHE_DIR"] = str(served)
        return
    if writable and report.manifest is None:   # a plain Triton cache, unchecked: used as Triton alone would
        os.environ["TRITON_CACHE_DIR"] = str(report.cache_dir)
        return
    # Read-only, or checked: reads come from the cache dir (its verified copy), writes go to the overlay. A checked
    # dir that the server wrote its misses into would hold foreign files at the next start, and be refused.
    overlay = overlay_dir(report, allow_shared_writable)
    report.read_only, report.overlay_dir = not writable, overlay
    os.environ["AUTOTUNE_CACHE_BASE"] = str(served)
    os.environ["TRITON_CACHE_DIR"] = str(overlay)
    os.environ["TRITON_CACHE_MANAGER"] = LAYERED


def copy_dir(report: LoaderReport) -> Path | None:
    """A fresh private dir for the verified copy, or None (with a warning) where other users could replace it: a
    parent of the temp dir they can write without the sticky bit, or own."""
    path = private_dir("autotune-cache-copy-")
    unsafe = integrity.writable_parents(path)
    if not unsafe:
        return path
    shutil.rmtree(path, ignore_errors=True)
    report.warnings.append(f"no private copy in {path.parent} ({'; '.join(map(str, unsafe))}): Triton reads "
                           f"{report.cache_dir} itself, which whoever can write it can change after the check")
    return None
