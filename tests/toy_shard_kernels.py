"""Kernels of toy_shard_target, and a runner with test hooks (environment variables, read in the build child):

AUTOTUNE_CACHE_TEST_RECORD=<file>        append {"pid", "gpu" (CUDA_VISIBLE_DEVICES), "H", "tokens"} per call
AUTOTUNE_CACHE_TEST_BARRIER=<dir>:<n>    at its first benchmark (toy_shared_kernel's, after its disk lookup
                                         missed), each process waits (60 s at most) until n processes are there,
                                         and skews its fake timings by its GPU: n GPUs then tune the shared key at
                                         once, each writing other timings.
"""
import json
import os
import time
from pathlib import Path

import triton
import triton.language as tl
from toy_target import _nb

CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((32, 1), (64, 2), (128, 4))]


@triton.autotune(configs=CONFIGS, key=["D"])
@triton.jit
def toy_shared_kernel(x, y, n, D: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y + offs, tl.load(x + offs, mask=mask) + D, mask=mask)


@triton.autotune(configs=CONFIGS, key=["H", "NB"])
@triton.jit
def toy_heads_kernel(x, y, n, H: tl.constexpr, NB: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y + offs, tl.load(x + offs, mask=mask) * H, mask=mask)


def _barrier(spec: str) -> None:
    """Wrap the emulated benchmark: its first call in this process waits for the other processes."""
    from autotune_cache.builder import emulation

    if getattr(emulation._fake_timing, "_barrier", False):
        return
    fake_timing = emulation._fake_timing

    def first_waits(kernel_call):
        if not first_waits.met:
            first_waits.met = True
            where, n = spec.rsplit(":", 1)
            (Path(where) / str(os.getpid())).touch()
            end = time.monotonic() + 60
            while len(list(Path(where).iterdir())) < int(n) and time.monotonic() < end:
                time.sleep(0.05)
            emulation.bench_calls += 5 * int(os.environ.get("CUDA_VISIBLE_DEVICES") or 0)
        return fake_timing(kernel_call)

    first_waits.met, first_waits._barrier = False, True
    emulation._fake_timing = first_waits


def run(shape, dtypes, tokens, device):
    import torch
    if os.environ.get("AUTOTUNE_CACHE_TEST_RECORD"):
        with open(os.environ["AUTOTUNE_CACHE_TEST_RECORD"], "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "H": shape.H,
                                "tokens": tokens}) + "\n")
    if os.environ.get("AUTOTUNE_CACHE_TEST_BARRIER"):
        _barrier(os.environ["AUTOTUNE_CACHE_TEST_BARRIER"])
    x = torch.randn(tokens * shape.H, dtype=getattr(torch, dtypes["act"]), device=device)
    y = torch.empty_like(x)
    grid = lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)  # noqa: E731
    toy_shared_kernel[grid](x, y, x.numel(), D=shape.K)
    toy_heads_kernel[grid](x, y, x.numel(), H=shape.H, NB=_nb(shape, tokens))
