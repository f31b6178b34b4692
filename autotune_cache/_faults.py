"""Test-only: a real GPU fault, for the fault-injection hook of the build child (AUTOTUNE_CACHE_FAULT=N:gpu-fault).

Triton is imported inside the function: importing this module costs nothing and needs no GPU.
"""
from __future__ import annotations

import os
import tempfile

# Elements (fp32: 4 bytes) between the buffer and each wild store: 4 TiB, 8 TiB, ... past a one-element
# allocation, far outside anything the CUDA allocator maps, so the store is an illegal address, not a quiet
# overwrite of another tensor.
WILD_STRIDE = 1 << 40
PROGRAMS = 8


def _wild_store_kernel():
    global tl   # the jit function resolves `tl` from this module's globals (Triton <3.6 ignores closures)
    import triton
    import triton.language as tl

    @triton.jit
    def wild_store(ptr, stride):
        tl.store(ptr + (tl.program_id(0) + 1).to(tl.int64) * stride, 1.0)

    return wild_store


def illegal_memory_access() -> None:
    """Launch a kernel that writes through a wild pointer and wait for it: on a GPU this raises the sticky
    "CUDA error: an illegal memory access was encountered" (the context is unusable afterwards, as after a
    faulting autotune config). Under emulation (no GPU) the kernel is compiled for sm_90 and the error raised
    by hand, so CPU tests cover the same path."""
    import torch

    emulated = os.environ.get("AUTOTUNE_CACHE_EMULATE") == "1"
    buf = torch.zeros(1, dtype=torch.float32, device="cpu" if emulated else "cuda")
    kernel = _wild_store_kernel()
    # Compile into a scratch dir, not the build's cache: the fault kernel is not something a server looks up.
    cache_dir = os.environ.get("TRITON_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="autotune-cache-fault-") as scratch:
        os.environ["TRITON_CACHE_DIR"] = scratch
        try:
            kernel[(PROGRAMS,)](buf, WILD_STRIDE)
            if emulated:
                raise RuntimeError("CUDA error: an illegal memory access was encountered (emulated fault)")
            torch.cuda.synchronize()
        finally:
            if cache_dir is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = cache_dir
    raise RuntimeError("gpu-fault injection: the wild stores did not fault")
