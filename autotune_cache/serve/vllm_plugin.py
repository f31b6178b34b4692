"""vLLM general plugin (entry-point group `vllm.general_plugins`), loaded in every vLLM process before device init.

Calls autotune_cache.install() when AUTOTUNE_CACHE_DIR is set; otherwise does nothing. It imports no kernel
module (the GDN kernels are imported later, when the model is built, and their autotuners are switched then)
and touches no GPU. Select it alone with VLLM_PLUGINS=autotune_cache.
"""
import logging
import os

log = logging.getLogger("autotune_cache")


def register() -> None:
    if not os.environ.get("AUTOTUNE_CACHE_DIR"):
        return
    from .loader import install
    report = install(log_at_exit=True)
    log.info("autotune-cache: serving GDN kernels from %s%s", report.cache_dir,
             " (read-only, misses go to an overlay)" if report.read_only else "")
