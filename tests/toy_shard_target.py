"""A toy target for sharded builds (kernels in toy_shard_kernels.py): toy_heads_kernel is keyed by the per-rank
head count, so each TP degree has keys of its own, and toy_shared_kernel by the head dim only, so every TP degree
reaches the same key (as FLA's l2norm_fwd_kernel keys are shared between TP degrees)."""
from toy_target import _nb, token_counts

from autotune_cache.targets import KernelSpec, Target

TARGET = Target(
    name="toy_shard",
    description="test kernels for sharded builds",
    module_prefixes=("toy_shard_kernels",),
    kernels=(KernelSpec("toy_shared_kernel", lambda s, t: {"D": s.K}, ("act", "act"), 3),
             KernelSpec("toy_heads_kernel", lambda s, t: {"H": s.H, "NB": _nb(s, t)}, ("act", "act"), 3)),
    default_dtypes=lambda shape: {"act": shape.dtype},
    token_counts=token_counts,
    runner="toy_shard_kernels.run",
)
