"""The toy target's kernel, imported only where it runs (the child, a probe): never by the planning parent."""
import triton
import triton.language as tl
from toy_target import _nb

CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((32, 1), (64, 2), (128, 4))]


@triton.autotune(configs=CONFIGS, key=["D", "NB"])
@triton.jit
def toy_scale_kernel(x, y, n, D: tl.constexpr, NB: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y + offs, tl.load(x + offs, mask=mask) * 2, mask=mask)


def launch(kernel, shape, dtypes, tokens, device):
    """One call of a toy kernel (this one, or toy_prune_kernels') at `tokens` rows of `shape`."""
    import torch
    x = torch.randn(tokens * shape.H, dtype=getattr(torch, dtypes["act"]), device=device)
    y = torch.empty_like(x)
    kernel[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, y, x.numel(), D=shape.K, NB=_nb(shape, tokens))


def run(shape, dtypes, tokens, device):
    launch(toy_scale_kernel, shape, dtypes, tokens, device)
