"""autotune-cache: tune Triton-autotuned GDN kernels ahead of serving into a plain Triton cache + manifest."""
__version__ = "0.1.0"

from .errors import (AutotuneCacheError, BuildFailedError, CacheDirError, ConfigError, NoGPUError,  # noqa: E402
                     SpecError, UnknownModelError)
from .spec import BuildSpec  # noqa: E402
from .models import ModelShape, PRESETS  # noqa: E402
# The submodule `plan` is imported before the function `plan` is defined: Python binds a submodule's name in its
# package when it is first imported, so a later first import (by orchestrator, in build()) would replace the
# function with the module and `autotune_cache.plan(spec)` would fail after a build.
from . import plan as _plan_module  # noqa: E402


def plan(spec):
    """BuildSpec -> Plan (units, keys, config counts). Pure: runs anywhere."""
    return _plan_module.plan(spec)


def install(cache_dir=None, **kwargs):
    """Serving side: make the GDN autotuners hit the cache in cache_dir (or AUTOTUNE_CACHE_DIR); see loader."""
    from .loader import install as _install
    return _install(cache_dir, **kwargs)


def build(spec, **kwargs):
    """Tune every unit of `spec` into spec.cache_dir in a child process; returns the Manifest."""
    from .orchestrator import build as _build
    return _build(spec, **kwargs)


__all__ = ["AutotuneCacheError", "BuildFailedError", "BuildSpec", "CacheDirError", "ConfigError", "ModelShape",
           "NoGPUError", "PRESETS", "SpecError", "UnknownModelError", "build", "install", "plan", "__version__"]
