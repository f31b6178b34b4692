"""Fault injection into the build child (AUTOTUNE_CACHE_FAULT=<unit>:<kind>[:always]): the one place that makes a
unit raise, crash, hang, run out of memory or fault the GPU, so that tests and GPU checks exercise the parent's
recovery on real failures. Test-only: the package never reads AUTOTUNE_CACHE_FAULT. `hook` is registered as a unit
hook of the child (autotune_cache.builder.child.add_unit_hook) by tests/boot/sitecustomize.py, in every process the
tests start (tests/conftest.py puts tests/boot first on PYTHONPATH). Torch and Triton are imported inside the
functions: importing this module costs nothing and needs no GPU.
"""
from __future__ import annotations

import os
import signal
import tempfile
import time

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


def illegal_memory_access(emulated: bool) -> None:
    """Launch a kernel that writes through a wild pointer and wait for it: on a GPU this raises the sticky
    "CUDA error: an illegal memory access was encountered" (the context is unusable afterwards, as after a
    faulting autotune config). Under emulation (no GPU) the kernel is compiled for sm_90 and the error raised
    by hand, so CPU tests cover the same path."""
    import torch

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


ENV = "AUTOTUNE_CACHE_FAULT"


def hook(index: int, attempt: int, emulated: bool) -> None:
    """The child's unit hook: the fault AUTOTUNE_CACHE_FAULT names, read at each unit (the child has the build's
    environment by then, whatever the fork server started with)."""
    inject(os.environ.get(ENV), index, attempt, emulated)


def inject(spec: str | None, index: int, attempt: int, emulated: bool = False) -> None:
    """AUTOTUNE_CACHE_FAULT="<unit index>:<kind>[:always]", where the index is the unit's position in the whole plan
    (not in this child's share of it, which shrinks on a retry); first attempt only unless ':always'. Kinds: raise,
    segfault, exit, hang, oom, oom-kill, gpu-fault, warn (what a noisy child prints: a Python warning, a library's
    log line, a print and a raw write to fd 2, each naming WARN_TEXT; then the unit fails)."""
    if not spec:
        return
    parts = spec.split(":")
    if int(parts[0]) != index or (attempt > 1 and parts[-1] != "always"):
        return
    kind = parts[1]
    if kind == "raise":
        raise RuntimeError(f"injected fault in unit {index}")
    if kind == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "exit":
        os._exit(3)
    if kind == "hang":
        while True:
            time.sleep(1)
    if kind == "oom":
        _exhaust_memory(emulated)
    if kind == "oom-kill":   # what the kernel's OOM killer does to a process that takes all host memory
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "gpu-fault":
        illegal_memory_access(emulated)
    if kind == "warn":
        noisy_child()
    raise ValueError(f"AUTOTUNE_CACHE_FAULT: unknown kind {kind!r}")


WARN_TEXT = "injected-child-noise"


def noisy_child() -> None:
    """What torch's NumPy warning and Triton's TRITON_DEFAULT_FP_FUSION warning do in a build child, each way a
    child's library can reach a terminal, then a failed unit (so the build keeps its log)."""
    import logging
    import sys
    import warnings
    warnings.warn(f"{WARN_TEXT}: a Python warning", UserWarning, stacklevel=1)
    logging.getLogger("triton").warning(f"{WARN_TEXT}: a log line")
    print(f"{WARN_TEXT}: a print", flush=True)
    sys.stderr.flush()
    os.write(2, f"{WARN_TEXT}: a raw write to fd 2\n".encode())
    raise RuntimeError("injected fault after a noisy child's output")


def _exhaust_memory(emulated: bool) -> None:
    """Allocate until the allocator fails: torch.OutOfMemoryError on a GPU. On the CPU the address space of this
    process is capped first (RLIMIT_AS, a little above what it maps now), so the allocation fails with a
    RuntimeError after a few hundred MB instead of driving a shared machine into its OOM killer."""
    import torch
    if torch.cuda.is_available() and not emulated:
        hog = []
        while True:
            hog.append(torch.empty(1 << 34, dtype=torch.uint8, device="cuda"))
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (256 << 20), hard))
    hog = []
    try:
        while True:   # address space, not pages: nothing is touched, so nothing is really used
            hog.append(torch.empty(64 << 20, dtype=torch.uint8))
    finally:
        hog.clear()   # room again for reporting the error
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def register() -> None:
    """Add `hook` to the build child's unit hooks (tests/boot/sitecustomize.py calls this once the child module is
    imported: in the fork server, before it forks any child)."""
    from autotune_cache.builder import child
    child.add_unit_hook(hook)
