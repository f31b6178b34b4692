"""The entry point vLLM loads (`vllm.general_plugins`: autotune_cache.integrations.vllm_plugin:register), kept at this
path for installed images whose metadata names it; the plugin itself is serve/vllm_plugin.py."""
from ..serve.vllm_plugin import register

__all__ = ["register"]
