"""Stand-in for a server using upstream FLA, written apart from the builder's call: several sequences packed in
one varlen batch, as a serving engine packs requests. Prints JSON: disk lookups and configs benchmarked.

    python serve_fla.py CACHE_DIR H HV STATE_DTYPE T[,T...]
"""
import json
import os
import sys

os.environ["TRITON_CACHE_DIR"] = os.path.abspath(sys.argv[1])
os.environ["TRITON_CACHE_AUTOTUNING"] = "1"

from autotune_cache.builder import emulation  # noqa: E402

emulation.fake_gpu()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from autotune_cache.serve.stand_in import counters  # noqa: E402

stats = counters()
from helpers import FirstMiss, stop_at_first_miss  # noqa: E402

first = {}
stop_at_first_miss(first)
from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # noqa: E402

H, HV, state_dtype = int(sys.argv[2]), int(sys.argv[3]), getattr(torch, sys.argv[4])
for T in map(int, sys.argv[5].split(",")):
    cuts = sorted({0, T // 3, T}) if T > 2 else [0, T]   # several requests in one prefill batch
    cu_seqlens = torch.tensor(cuts, dtype=torch.long)
    N = len(cuts) - 1
    q = torch.rand(1, T, H, 128).to(torch.bfloat16)
    k = torch.rand(1, T, H, 128).to(torch.bfloat16)
    v = torch.rand(1, T, HV, 128).to(torch.bfloat16)
    g = F.logsigmoid(torch.rand(1, T, HV))
    beta = torch.rand(1, T, HV).to(torch.bfloat16)
    state = torch.randn(N, HV, 128, 128).to(state_dtype)
    try:
        with torch.no_grad():
            chunk_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=state, output_final_state=True,
                                   cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=True)
    except FirstMiss:
        break
print(json.dumps({"kernels": {k: dict(v) for k, v in stats.items()}, "configs_benchmarked": emulation.bench_calls,
                  **first}))
