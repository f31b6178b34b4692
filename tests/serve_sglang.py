"""SGLang's own serving-path code on the fake sm_90 GPU: TritonGDNKernel.extend (its GDN prefill through the Triton
chunk kernel), with g and beta from SGLang's fused_gdn_gating and the state pool + slot indices it passes.
Prints JSON: disk lookups (kernel, key, cache dir, hit) and configs benchmarked.

    python serve_sglang.py CACHE_DIR NUM_K_HEADS NUM_V_HEADS TP STATE_DTYPE
"""
import json
import os
import sys

os.environ["TRITON_CACHE_DIR"] = os.path.abspath(sys.argv[1])
os.environ["TRITON_CACHE_AUTOTUNING"] = "1"

from autotune_cache.builder import emulation  # noqa: E402

emulation.fake_gpu()
import torch  # noqa: E402

from autotune_cache.autotuner import disk  # noqa: E402

lookups = []
disk.add_listener(lambda lk: lookups.append(
    {"kernel": lk.kernel, "key": list(lk.key), "dir": lk.path.parent.name if lk.path else None, "hit": lk.hit}))

from helpers import FirstMiss, stop_at_first_miss  # noqa: E402

first: dict = {}
stop_at_first_miss(first)
from sglang.kernels.ops.attention.linear.fused_gdn_gating import fused_gdn_gating  # noqa: E402
from sglang.srt.layers.attention.linear.kernels.gdn_triton import TritonGDNKernel  # noqa: E402

nk, nv, tp, state_dtype = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), getattr(torch, sys.argv[5])
H, HV, K, V, T = nk // tp, nv // tp, 128, 128, 100
lens = [37, T - 37]   # two requests in one extend batch
a, b = torch.randn(T, HV, dtype=torch.bfloat16), torch.randn(T, HV, dtype=torch.bfloat16)
g, beta = fused_gdn_gating(torch.randn(HV), a, b, torch.randn(HV, dtype=torch.bfloat16))
q, k = (torch.randn(1, T, H, K, dtype=torch.bfloat16) for _ in range(2))
v = torch.randn(1, T, HV, V, dtype=torch.bfloat16)
pool = torch.zeros(16, HV, K, V, dtype=state_dtype)
try:
    TritonGDNKernel().extend(q, k, v, g, beta, ssm_states=pool,
                             cache_indices=torch.tensor([5, 9], dtype=torch.int32),
                             query_start_loc=torch.tensor([0, lens[0], T], dtype=torch.int32))
except FirstMiss:
    pass
print(json.dumps({"lookups": lookups, "configs_benchmarked": emulation.bench_calls, **first}))
