"""autotune-cache: tune Triton-autotuned GDN kernels ahead of serving into a plain Triton cache + manifest.

The public face: `plan`, `build`, `install`, the spec and model records, the errors. Where each part lives:
ARCHITECTURE.md.
"""
from __future__ import annotations

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
from .models import PRESETS, ModelShape
from .serve.loader import install  # imports no kernel module and no GPU: cheap
from .version import __version__

if TYPE_CHECKING:   # annotations only: rich and the build modules are imported when build() / plan() run
    from rich.console import Console

    from .builder.plan import Plan
    from .cache.manifest import Manifest


def plan(spec: BuildSpec) -> Plan:
    """BuildSpec -> Plan (units, keys, config counts). Pure: runs anywhere."""
    from .builder.plan import plan as _plan
    return _plan(spec)


def build(spec: BuildSpec, *, console: Console | None = None, progress: bool | str = True) -> Manifest:
    """Tune every unit of `spec` into spec.cache_dir in a child process; returns the Manifest (raises
    BuildFailedError, with .manifest, when units stayed failed; NoGPUError without a GPU unless spec.emulate).
    `console`: a rich Console for the plan, warnings and progress (default stderr); `progress`: True (bars on a
    terminal, a line per unit elsewhere), False, or "tty" / "plain" / "none"."""
    from .builder.orchestrator import build as _build
    return _build(spec, console=console, progress=progress)


__all__ = ["AutotuneCacheError", "BuildFailedError", "BuildSpec", "CacheDirError", "ConfigError", "ModelShape",
           "NoGPUError", "PRESETS", "SpecError", "UnknownModelError", "build", "install", "plan", "__version__"]
