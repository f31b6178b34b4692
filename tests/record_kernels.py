"""Small autotuned Triton kernels for the record tests (test_record*.py): fast to compile, and shaped like the
kernels records must describe: a grid function of the config's meta-parameters, an index tensor (cu_seqlens) that
steers the launch, a constexpr passed by keyword, heuristics under the autotuner, a strided view."""
import triton
import triton.language as tl


@triton.autotune(configs=[triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((32, 1), (64, 2), (128, 4))],
                 key=["D"])
@triton.heuristics({"EVEN": lambda args: args["n"] % args["BLOCK"] == 0})
@triton.jit
def record_scale_kernel(x, y, cu_seqlens, n, scale, D: tl.constexpr, BLOCK: tl.constexpr, EVEN: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    start = tl.load(cu_seqlens)
    tl.store(y + offs, tl.load(x + start + offs, mask=mask) * scale, mask=mask)


@triton.autotune(configs=[triton.Config({"BLOCK": b}) for b in (16, 32)], key=["n"])
@triton.jit
def record_copy_kernel(x, y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + offs, tl.load(x + offs, mask=offs < n), mask=offs < n)


def scale(tokens: int, D: int = 64, dtype: str = "float32", device: str = "cpu"):
    import torch
    x = torch.randn(tokens + 8, D, dtype=getattr(torch, dtype), device=device)[:, : D // 2]   # a strided view
    y = torch.empty(tokens * D, dtype=x.dtype, device=device)
    cu_seqlens = torch.tensor([0, tokens // 3, tokens], dtype=torch.int32, device=device)
    n = tokens * (D // 2)
    record_scale_kernel[lambda meta: (triton.cdiv(meta["n"], meta["BLOCK"]),)](x, y, cu_seqlens, n, 0.5, D=D)


def copy(n: int, device: str = "cpu"):
    import torch
    x = torch.randn(n, device=device)
    y = torch.empty_like(x)
    record_copy_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](x, y, n)
