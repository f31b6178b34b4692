"""autotune-cache: tune Triton-autotuned GDN kernels ahead of serving into a plain Triton cache + manifest.

The public face: `plan`, `build`, `ensure`, `install`, the spec and model records, the errors. Where each part
lives: ARCHITECTURE.md.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .builder.spec import BuildSpec
from .errors import (
    AutotuneCacheError,
    BuildFailedError,
    CacheDirError,
    ConfigError,
    NoGPUError,
    SpecError,
    UnknownModelError,
)
from .serve.loader import install  # imports no kernel module and no GPU: cheap
from .shapes import PRESETS, ModelShape
from .version import __version__

if TYPE_CHECKING:   # annotations only: rich and the build modules are imported when build() / plan() run
    from rich.console import Console

    from .builder.plan import Plan
    from .cache.manifest import Manifest
    from .operations.ensure import Ensured


def plan(spec: BuildSpec) -> Plan:
    """BuildSpec -> Plan (units, keys, config counts). Pure: runs anywhere."""
    from .builder.plan import plan as _plan
    return _plan(spec)


def build(spec: BuildSpec, *, console: Console | None = None, progress: bool | str = True) -> Manifest:
    """Tune every unit of `spec` into spec.cache_dir in a child process; returns the Manifest (raises
    BuildFailedError, with .manifest, when units stayed failed; NoGPUError without a GPU unless spec.emulate).
    `console`: a rich Console for the plan, warnings and progress (default stderr); `progress`: True (bars on a
    terminal, a line per unit elsewhere), False, or "tty" / "plain" / "none"."""
    from .operations import build_into
    return build_into(spec, console=console, progress=progress).manifest


def ensure(spec: BuildSpec, cache_dir: str | os.PathLike[str] | None = None, *, rebuild: bool = False,
           allow_emulated: bool | None = None, allow_writable: bool | None = None,
           public_key: str | os.PathLike[str] | None = None, from_url: str | None = None,
           console: Console | None = None, progress: bool | str = True) -> Ensured:
    """Make `cache_dir` (default spec.cache_dir) serve `spec`, as an init container does before the server starts:
    the units it lacks are built (a GPU, or spec.emulate), the rest checked as install() will check it. Returns an
    Ensured: `.ok` when the server will hit, else `.problems` (why each would miss) and `.remedy`; `.incomplete` when
    units failed to build (finished ones are kept). `rebuild=True`: a cache that cannot serve as it is (built for
    another Triton/Python/GPU, damaged, refused) is rebuilt beside it and swapped in atomically. `allow_emulated`,
    `allow_writable`, `public_key`: as the server's env vars (None: read from them). `from_url`: fetch the
    registry's cache first when this one is missing or stale. Raises NoGPUError when units are missing and there
    is no GPU (a dir it created is gone again), CacheDirError for a path that is no directory. Same as
    `autotune-cache ensure` (operations/ensure.py)."""
    from .operations.ensure import ensure as _ensure
    return _ensure(spec, cache_dir, rebuild=rebuild, allow_emulated=allow_emulated, allow_writable=allow_writable,
                   public_key=public_key, from_url=from_url, console=console, progress=progress)


__all__ = ["AutotuneCacheError", "BuildFailedError", "BuildSpec", "CacheDirError", "ConfigError", "ModelShape",
           "NoGPUError", "PRESETS", "SpecError", "UnknownModelError", "build", "ensure", "install", "plan",
           "__version__"]
