"""Another host's disk-key parts, for an emulated build that must write exactly the disk keys that host would
(tests/data/gpu-host-triton-3.6.0-keys.json; builder/emulation.py). The fake GPU itself is emulation.py's: a
Triton driver set through `driver.set_active`, and torch's device queries.

Private: Triton takes `triton_key()` from the autotuner's module globals and `make_backend` from the compiler
module at each disk lookup, with no knob for either; so both names are replaced, once per process."""
from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_keys: dict[str, str] = {}   # the host's {"triton_key", "backend_hash"}, once set


class _Backend:
    """Triton's backend for the target, except for the hash that enters the disk key."""

    def __init__(self, backend: Any, backend_hash: str) -> None:
        self.backend, self._hash = backend, backend_hash

    def hash(self) -> str:
        return self._hash

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def use_device_keys(keys: dict) -> None:
    """Every disk key of this process from now on uses keys["triton_key"] and keys["backend_hash"]."""
    import triton.compiler.compiler as cc
    import triton.runtime.autotuner as at

    with _lock:
        first = not _keys
        _keys.update(triton_key=keys["triton_key"], backend_hash=keys["backend_hash"])
        if not first:
            return
        real_make_backend = cc.make_backend
        at.triton_key = lambda: _keys["triton_key"]
        cc.make_backend = lambda target: _Backend(real_make_backend(target), _keys["backend_hash"])
