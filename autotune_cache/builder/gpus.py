"""Which GPUs a build gives its children, found without importing torch (the build parent never initializes CUDA)."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import SpecError


@dataclass(frozen=True)
class Visible:
    """GPUs this process may use. Example: Visible(ids=("0", "1"), source="nvidia-smi -L")."""
    ids: tuple[str, ...]   # what a child gets as CUDA_VISIBLE_DEVICES: indices, or UUIDs as the user gave them
    source: str            # how they were found, for messages: "CUDA_VISIBLE_DEVICES=2,3", "nvidia-smi -L", ...


def _entries(cuda_visible_devices: str) -> tuple[str, ...]:
    """"2, 3" -> ("2", "3"); "" -> () (no GPU)."""
    return tuple(x.strip() for x in cuda_visible_devices.split(",") if x.strip())


def nvidia_smi_list() -> str | None:
    """`nvidia-smi -L` output ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)" per GPU), None where it fails."""
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def visible(environ: Mapping[str, str] | None = None,
            smi: Callable[[], str | None] = nvidia_smi_list) -> Visible:
    """CUDA_VISIBLE_DEVICES when set (its entries, passed through; empty = none), else one per `GPU n:` line of
    `nvidia-smi -L`, else one GPU assumed (a child without any says so: NoGPUError)."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        value = environ["CUDA_VISIBLE_DEVICES"]
        return Visible(_entries(value), f"CUDA_VISIBLE_DEVICES={value}")
    listing = smi()
    if listing is None:
        return Visible(("0",), "one assumed: no CUDA_VISIBLE_DEVICES and no working nvidia-smi")
    count = sum(line.startswith("GPU ") for line in listing.splitlines())
    return Visible(tuple(map(str, range(count))), "nvidia-smi -L")


def for_build(gpus: int | None, emulate: bool, environ: Mapping[str, str] | None = None,
              smi: Callable[[], str | None] = nvidia_smi_list) -> tuple[str | None, ...]:
    """The GPU of each build child running at once: (None,) is one child that sees every visible GPU (a one-GPU
    build, as before sharding); ("0", "1") two children, one per GPU. `gpus` None = every visible GPU (emulated:
    one). Raises SpecError when more are asked for than are visible; emulated builds take any number (their GPUs
    are fake), named by CUDA_VISIBLE_DEVICES when it lists enough, else 0..n-1."""
    environ = os.environ if environ is None else environ
    if emulate:
        n = gpus or 1
        if n == 1:
            return (None,)
        listed = _entries(environ.get("CUDA_VISIBLE_DEVICES", ""))
        return listed[:n] if len(listed) >= n else tuple(map(str, range(n)))
    seen = visible(environ, smi)
    n = gpus if gpus is not None else max(1, len(seen.ids))
    if n == 1:   # none visible: the child reports it (NoGPUError, with what torch sees)
        return (None,)
    if n > len(seen.ids):
        have = f"{len(seen.ids)} visible" if seen.ids else "none visible"
        raise SpecError(f"--gpus {n}: more GPUs than this host shows, {have} ({seen.source})")
    return tuple(seen.ids[:n])
