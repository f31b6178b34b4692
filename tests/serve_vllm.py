"""vLLM's own serving-path code on the fake sm_90 GPU: QwenGatedDeltaNetAttention._warmup_prefill_kernels, the
method vLLM runs in every GDN layer during profile_run (T=64, the real Triton prefill call), invoked on a stand-in
layer object with the model's per-rank attributes. Prints JSON: disk lookups (kernel, key, cache dir, hit) and
configs benchmarked.

    python serve_vllm.py CACHE_DIR NUM_K_HEADS NUM_V_HEADS TP STATE_DTYPE
"""
import json
import os
import sys
import types

os.environ["TRITON_CACHE_DIR"] = os.path.abspath(sys.argv[1])
os.environ["TRITON_CACHE_AUTOTUNING"] = "1"   # vLLM >= 0.19 sets it at import, too

from autotune_cache.builder import emulation  # noqa: E402

emulation.fake_gpu()
import torch  # noqa: E402

from autotune_cache.autotuner import disk  # noqa: E402

lookups = []
disk.add_listener(lambda lk: lookups.append(
    {"kernel": lk.kernel, "key": list(lk.key), "dir": lk.path.parent.name if lk.path else None, "hit": lk.hit}))

from helpers import FirstMiss, stop_at_first_miss  # noqa: E402

first = {}
stop_at_first_miss(first)
from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn as gdn  # noqa: E402

from autotune_cache.targets.vllm import relax_for_fake_gpu  # noqa: E402

relax_for_fake_gpu()

nk, nv, tp, state_dtype = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), getattr(torch, sys.argv[5])
K = V = 128
layer = types.SimpleNamespace(
    _prefill_kernels_warmed_up=False, _exports_checkpoints=False, num_k_heads=nk, num_v_heads=nv, tp_size=tp,
    head_k_dim=K, head_v_dim=V, gdn_prefill_backend="triton", prefix="model.layers.0.linear_attn",
    A_log=torch.randn(nv // tp, dtype=torch.float32), dt_bias=torch.randn(nv // tp, dtype=torch.bfloat16),
    get_state_dtype=lambda: (torch.bfloat16, state_dtype))
rule = object.__new__(gdn.ChunkGatedDeltaRule)   # its forward_native is the Triton path; no vLLM config needed
layer.chunk_gated_delta_rule = lambda **kw: gdn.ChunkGatedDeltaRule.forward_native(rule, **{
    k: v for k, v in kw.items() if k != "aiter_prefill_metadata"})
v_dim = nv // tp * V
qkv = torch.randn(64, 2 * (nk // tp) * K + 2 * v_dim, dtype=torch.bfloat16)   # q, k, v and the gate z
try:
    gdn.QwenGatedDeltaNetAttention._warmup_prefill_kernels(layer, qkv, v_dim)
except FirstMiss:
    pass
print(json.dumps({"lookups": lookups, "configs_benchmarked": emulation.bench_calls, **first}))
