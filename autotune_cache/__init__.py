"""autotune-cache: tune Triton-autotuned GDN kernels ahead of serving into a plain Triton cache + manifest.

The public face: `plan`, `build`, `ensure`, `install` (and `loader_report()`, the report of this process's
install()), what they take and return (`BuildSpec`, `ModelShape`, `PRESETS`, `Plan`, `Manifest`, `Ensured`,
`LoaderReport`) and every error they raise (all `AutotuneCacheError`). Where each part lives: ARCHITECTURE.md.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .builder.spec import BuildSpec
from .cache.manifest import Manifest
from .errors import (
    AutotuneCacheError,
    BuildFailedError,
    BundleError,
    CacheDirError,
    CacheMissError,
    ConfigError,
    IncompatibleCacheError,
    IntegrityError,
    NoGPUError,
    NoMatchingBundleError,
    RegistryError,
    RegistryUnreachableError,
    SharedWritableError,
    SpecError,
    UnknownModelError,
    UnsupportedTritonError,
)
from .serve.loader import install  # imports no kernel module and no GPU: cheap
from .serve.loader import report as loader_report
from .serve.report import LoaderReport
from .shapes import PRESETS, ModelShape
from .version import __version__

if TYPE_CHECKING:   # annotations only: rich and the build modules are imported when build() / plan() run
    from rich.console import Console

    from .builder.plan import Plan
    from .operations.ensure import Ensured

# Records whose modules import the targets or the build: imported on first use (`autotune_cache.Plan`), so that
# `import autotune_cache` in a server stays as cheap as install() needs.
_LAZY = {"Plan": ("builder.plan", "Plan"), "Ensured": ("operations.ensure", "Ensured")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module
        module, attr = _LAZY[name]
        return getattr(import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plan(spec: BuildSpec) -> Plan:
    """The units and keys a build of `spec` (a BuildSpec: model, TP degrees, targets, max tokens) would tune: a
    Plan (`.units`, `.keys` distinct (kernel, key) pairs, `.configs` to benchmark). Pure: no GPU, runs anywhere;
    SpecError for a spec that cannot be planned (a TP degree the heads do not divide by, too many keys)."""
    from .builder.plan import plan as _plan
    return _plan(spec)


def build(spec: BuildSpec, *, console: Console | None = None, progress: bool | str = True) -> Manifest:
    """Tune every unit of `spec` (a BuildSpec; spec.cache_dir is where) into its cache dir in a child process;
    returns the Manifest written there.

    `console`: a rich Console for the plan, warnings and progress (default stderr). `progress`: True (bars on a
    terminal, a line per unit elsewhere), False (none), or "tty" / "plain" / "none".
    Raises BuildFailedError (its `.manifest` holds the finished units, which stay on disk) when units stayed
    failed, NoGPUError without a CUDA GPU unless spec.emulate, CacheDirError for a cache dir that cannot be used,
    SpecError for a spec that cannot be planned."""
    from .operations import build_into
    return build_into(spec, console=console, progress=progress).manifest


def ensure(spec: BuildSpec, cache_dir: str | os.PathLike[str] | None = None, *, rebuild: bool = False,
           allow_emulated: bool | None = None, allow_writable: bool | None = None,
           public_key: str | os.PathLike[str] | None = None, from_url: str | None = None,
           console: Console | None = None, progress: bool | str = True) -> Ensured:
    """Make `cache_dir` serve `spec`, as an init container does before the server starts: the units it lacks are
    built (a GPU, or spec.emulate), the rest checked as install() will check it. Same as `autotune-cache ensure`
    (operations/ensure.py).

    `spec`: the BuildSpec the server will run (model, TP degrees, targets, max tokens). `cache_dir`: the dir
    (default spec.cache_dir). `rebuild`: a cache that cannot serve as it is (built for another
    Triton/Python/GPU, damaged, refused) is rebuilt beside it and swapped in atomically; without it, it is left
    alone and its problems returned. `allow_emulated`, `allow_writable`, `public_key`: as the server's
    AUTOTUNE_CACHE_ALLOW_EMULATED, _ALLOW_WRITABLE and _PUBLIC_KEY (None: read from those env vars). `from_url`: a
    registry URL (file://, s3://, ...) whose cache is fetched first when this one is missing or stale. `console`: a
    rich Console for the build's progress and ensure's notes (None: stderr); `progress`: as build()'s.

    Returns an Ensured: `.ok` when the server will hit, else `.problems` (why each would miss) and `.remedy`;
    `.incomplete` when units failed to build (finished ones are kept). Raises NoGPUError when units are missing and
    there is no GPU (a dir it created is gone again), CacheDirError for a path that is no directory,
    UnsupportedTritonError for a Triton this tool cannot use, RegistryError when `from_url` cannot be read."""
    from .operations.ensure import ensure as _ensure
    return _ensure(spec, cache_dir, rebuild=rebuild, allow_emulated=allow_emulated, allow_writable=allow_writable,
                   public_key=public_key, from_url=from_url, console=console, progress=progress)


__all__ = ["AutotuneCacheError", "BuildFailedError", "BuildSpec", "BundleError", "CacheDirError", "CacheMissError",
           "ConfigError", "Ensured", "IncompatibleCacheError", "IntegrityError", "LoaderReport", "Manifest",
           "ModelShape", "NoGPUError", "NoMatchingBundleError", "PRESETS", "Plan", "RegistryError",
           "RegistryUnreachableError", "SharedWritableError", "SpecError", "UnknownModelError",
           "UnsupportedTritonError", "build", "ensure", "install", "loader_report", "plan", "__version__"]
