"""toy_prune_target's kernel: toy_target's, with an `early_config_prune` that keeps one config at NB = 1."""
import triton
import triton.language as tl
from toy_kernels import CONFIGS, launch


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
    launch(toy_prune_kernel, shape, dtypes, tokens, device)
