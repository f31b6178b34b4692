"""A toy target whose kernel's configs prune to one for some keys (kernel in toy_prune_kernels.py): at NB = 1 its
`early_config_prune` keeps one config, at NB >= 2 all three. Triton 3.8+ looks nothing up on disk for a key left
with one config (autotuner/versions.py); 3.6 looks it up like any other."""
from dataclasses import replace

from toy_target import TARGET as TOY
from toy_target import _nb

from autotune_cache.targets import KernelSpec

TARGET = replace(
    TOY, name="toy_prune", description="test kernel whose configs prune to one at NB = 1",
    module_prefixes=("toy_prune_kernels",),
    kernels=(KernelSpec("toy_prune_kernel", lambda s, t: {"D": s.K, "NB": _nb(s, t)}, ("act", "act"), 3),),
    runner="toy_prune_kernels.run",
)
