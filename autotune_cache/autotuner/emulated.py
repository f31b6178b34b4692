"""Another host's disk-key parts, for an emulated build that must write exactly the disk keys that host would
(tests/data/gpu-host-triton-3.6.0-keys.json; builder/emulation.py). The fake GPU itself is emulation.py's: a
Triton driver set through `driver.set_active`, and torch's device queries.

Private: Triton takes `triton_key()` from the autotuner's module globals and `make_backend` from the compiler
module at each disk lookup, with no knob for either; so both are replaced, once per process (hooks.wrap_global).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import hooks

_keys: dict[str, str] = {}   # the host's {"triton_key", "backend_hash"}: the last ones given


class _Backend:
    """Triton's backend for the target, except for the hash that enters the disk key."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def hash(self) -> str:
        return _keys["backend_hash"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def _host_triton_key(triton_key: Callable) -> Callable:
    return lambda: _keys["triton_key"]


def _host_backend(make_backend: Callable) -> Callable:
    return lambda target: _Backend(make_backend(target))


def use_device_keys(keys: dict) -> None:
    """Every disk key of this process from now on uses keys["triton_key"] and keys["backend_hash"]."""
    _keys.update(triton_key=keys["triton_key"], backend_hash=keys["backend_hash"])
    hooks.wrap_global("triton.runtime.autotuner", "triton_key", _host_triton_key)
    hooks.wrap_global("triton.compiler.compiler", "make_backend", _host_backend)
