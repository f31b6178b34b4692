"""vLLM general plugin (entry-point group `vllm.general_plugins`), loaded in every vLLM process before device init.

Calls autotune_cache.install() when AUTOTUNE_CACHE_DIR is set; otherwise does nothing. With AUTOTUNE_CACHE_URL, it
first fetches the registry's cache when the dir's is missing or stale (registry/pull.py; one process per node
downloads). It imports no kernel
module (the GDN kernels are imported later, when the model is built, and their autotuners are switched then)
and touches no GPU. Select it alone with VLLM_PLUGINS=autotune_cache.

vLLM does not catch what a plugin raises: the server would die at start. So the plugin never raises unless strict
(AUTOTUNE_CACHE_STRICT), and then only an AutotuneCacheError. Otherwise a cache install() cannot use (refused: it
tunes into a private dir; or no such dir) is logged and the server starts, tuning its kernels itself.
"""
import logging

from .. import settings

log = logging.getLogger("autotune_cache")


def register() -> None:
    env = settings.current()
    if env.dir is None:
        return
    from ..errors import AutotuneCacheError, exception_line
    from .loader import install
    if env.url:   # fetch the registry's cache first when missing or stale
        from ..registry.pull import pull_for_server
        pull_for_server(log)
    try:
        report = install(log_at_exit=True)
    except Exception as e:   # install() raises AutotuneCacheError only; anything else is a bug of ours
        if env.strict:
            if isinstance(e, AutotuneCacheError):
                raise
            raise AutotuneCacheError(f"autotune-cache: install failed: {exception_line(e)}") from e
        log.error("autotune-cache: cache %s not used (%s); the server tunes its kernels itself",
                  env.dir, exception_line(e))
        return
    log.info("autotune-cache: serving GDN kernels from %s%s", report.cache_dir,
             " (read-only, misses go to an overlay)" if report.read_only else "")
