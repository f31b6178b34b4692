"""A small autotuned Triton kernel as a build target (kernel in toy_kernels.py): fast to compile, same cache
code as FLA's kernels. Its key holds NB = cdiv(tokens, 1024), a token-dependent field like FLA's l2norm NB."""
from autotune_cache.targets import KernelSpec, Target

ROWS_PER_NB = 1024


def _nb(shape, tokens):
    return -(-tokens // ROWS_PER_NB)


def token_counts(shape, max_tokens):
    return [min(nb * ROWS_PER_NB, max_tokens) for nb in range(1, _nb(shape, max_tokens) + 1)]


TARGET = Target(
    name="toy",
    description="test kernel",
    module_prefixes=("toy_kernels",),
    kernels=(KernelSpec("toy_scale_kernel", lambda s, t: {"D": s.K, "NB": _nb(s, t)}, ("act", "act"), 3),),
    default_dtypes=lambda shape: {"act": shape.dtype},
    token_counts=token_counts,
    runner="toy_kernels.run",
)
