"""toy_prune_target's kernel: toy_target's, with an `early_config_prune` that keeps one config at NB = 1."""
import triton
import triton.language as tl
from toy_target import _nb

CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((32, 1), (64, 2), (128, 4))]


def one_at_nb1(configs, nargs, **kwargs):
    """Triton's early_config_prune: NB is passed by keyword, so it is in kwargs."""
    return configs[:1] if {**nargs, **kwargs}["NB"] == 1 else configs


@triton.autotune(configs=CONFIGS, key=["D", "NB"], prune_configs_by={"early_config_prune": one_at_nb1})
@triton.jit
def toy_prune_kernel(x, y, n, D: tl.constexpr, NB: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y + offs, tl.load(x + offs, mask=mask) * 3, mask=mask)


def run(shape, dtypes, tokens, device):
    import torch
    x = torch.randn(tokens * shape.H, dtype=getattr(torch, dtypes["act"]), device=device)
    y = torch.empty_like(x)
    toy_prune_kernel[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](
        x, y, x.numel(), D=shape.K, NB=_nb(shape, tokens))
