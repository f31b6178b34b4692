"""vLLM's vendored FLA kernels, called as vLLM's GDN layer calls them on its Triton prefill path.

vLLM >= 0.26 vendors FLA under vllm.third_party.flash_linear_attention.ops. Earlier versions kept it in
vllm.model_executor.layers.fla.ops, whose keys were never checked: they are refused (UnsupportedEngineError). Its
Qwen GDN layer (vllm/model_executor/layers/mamba/gdn/qwen_gdn_linear_attn.py, 0.33) builds q/k/v/g/beta with
fused_post_conv_prep (L2 norm applied there, so the autotuned l2norm kernel is not on this path), then calls
chunk_gated_delta_rule with int32 cu_seqlens (query_start_loc), chunk indices/offsets precomputed by the metadata
builder, the initial state gathered from the state cache ([N, HV, V, K], state dtype), output_final_state=True and
use_qk_l2norm_in_kernel=False. g and beta come out fp32. No key holds T, key heads or the sequence split. Checked
against vLLM 0.33.0; on H100/H200 vLLM defaults to FlashInfer for GDN prefill, and this path runs with
`--gdn-prefill-backend triton` and on other GPUs.
"""
from __future__ import annotations

import functools

from ..shapes import RankShape
from . import KernelSpec, Target, refuse_older_layout

BT = 64
MODULES = ("vllm.third_party.flash_linear_attention.ops",)
OLD_MODULE = "vllm.model_executor.layers.fla.ops"   # vLLM <= 0.25
SUPPORTED = "vLLM >= 0.26 (keys checked with 0.33.0)"


KERNELS = (
    KernelSpec("chunk_local_cumsum_scalar_kernel",
               lambda s, t: {"B": 1, "H": s.HV, "BT": BT, "IS_VARLEN": True, "REVERSE": False},
               ("g", "float32", "index", "index"), 4),
    KernelSpec("chunk_scaled_dot_kkt_fwd_kernel", lambda s, t: {"H": s.HV, "K": s.K, "BT": BT, "IS_VARLEN": True},
               ("act", "float32", "beta", "float32", "index", "index"), 27),
    KernelSpec("merge_16x16_to_64x64_inverse_kernel", lambda s, t: {"H": s.HV, "BT": BT, "IS_VARLEN": True},
               ("float32", "act", "index", "index"), 12),
    KernelSpec("recompute_w_u_fwd_kernel",
               lambda s, t: {"H": s.HV, "K": s.K, "V": s.V, "BT": BT, "BK": 64, "BV": 64, "IS_VARLEN": True},
               ("act", "act", "beta", "act", "act", "act", "float32", "index", "index"), 9),
    KernelSpec("chunk_gated_delta_rule_fwd_kernel_h_blockdim64",
               lambda s, t: {"H": s.HV, "K": s.K, "V": s.V, "BT": BT},
               ("act", "act", "act", "act", "float32", "act", "state", "float32", "index", "int64"), 12),
    KernelSpec("chunk_fwd_kernel_o", lambda s, t: {"H": s.HV, "K": s.K, "V": s.V, "BT": BT},
               ("act", "act", "act", "act", "float32", "act", "index", "index"), 24),
)


def token_counts(shape: RankShape, max_tokens: int) -> list[int]:
    # No key depends on T: tune once, at the largest prefill the server runs (vLLM's own warmup tunes at 64).
    return [max_tokens]


def default_dtypes(shape: RankShape) -> dict[str, str]:
    return {"act": shape.dtype, "state": shape.state_dtype, "g": "float32", "beta": "float32", "index": "int32"}


def _ops():
    import importlib
    try:
        return MODULES[0], importlib.import_module(MODULES[0])
    except ImportError:
        refuse_older_layout(OLD_MODULE, "vllm", SUPPORTED)
        raise


def relax_for_fake_gpu() -> None:
    """vLLM stages host-to-device copies in pinned memory and empties the accelerator's cache: both need a real
    GPU. On the fake one (builder/emulation.py), plain copies and no-op emptying change no kernel argument, so no
    key."""
    import torch
    import vllm.utils.torch_utils as torch_utils

    torch_utils.PIN_MEMORY = False
    if hasattr(torch, "accelerator"):
        torch.accelerator.empty_cache = lambda *a, **k: None


def _inputs(shape: RankShape, dtypes: dict[str, str], lens: list[int], device: str) -> dict:
    """The arguments of one prefill batch of len(lens) sequences as vLLM's GDN layer passes them: q and k already
    L2-normalized (fused_post_conv_prep, which keeps the chunked recurrence in range), int32 cu_seqlens, chunk
    indices/offsets precomputed on the CPU by the metadata builder's helpers, each sequence's initial state gathered
    from its slot of the state cache, output_final_state=True."""
    import importlib

    import torch

    name, _ = _ops()
    dt = {role: getattr(torch, d) for role, d in dtypes.items()}
    T, n = sum(lens), len(lens)
    cu_seqlens = torch.tensor([0, *lens], dtype=dt["index"]).cumsum(0, dtype=dt["index"])
    index = importlib.import_module(f"{name}.index")
    if device == "cpu":
        relax_for_fake_gpu()
    chunks = {"chunk_indices": index.prepare_chunk_indices(cu_seqlens, BT).to(device),
              "chunk_offsets": index.prepare_chunk_offsets(cu_seqlens, BT).to(device)}
    q, k = (torch.nn.functional.normalize(torch.randn(1, T, shape.H, shape.K, device=device), dim=-1)
            .to(dt["act"]) for _ in range(2))
    v = torch.randn(1, T, shape.HV, shape.V, dtype=dt["act"], device=device)
    g = torch.nn.functional.logsigmoid(torch.randn(1, T, shape.HV, device=device)).to(dt["g"])
    beta = torch.rand(1, T, shape.HV, device=device).sigmoid().to(dt["beta"])
    cache = torch.zeros(n + 1, shape.HV, shape.V, shape.K, dtype=dt["state"], device=device)
    state = cache[torch.arange(1, n + 1, device=device)].contiguous()   # the layer gathers each sequence's slot
    return dict(q=q, k=k, v=v, g=g, beta=beta, initial_state=state, output_final_state=True,
                cu_seqlens=cu_seqlens.to(device), use_qk_l2norm_in_kernel=False, **chunks)


def run(shape: RankShape, dtypes: dict[str, str], tokens: int, device: str) -> None:
    """One sequence of `tokens` through the vendored op (what the layer's forward_native calls), without importing
    the layer's module: a build child needs only the kernels."""
    import torch

    inputs = _inputs(shape, dtypes, [tokens], device)
    with torch.inference_mode():
        _ops()[1].chunk_gated_delta_rule(**inputs)


TARGET = Target(
    name="vllm",
    description="vLLM's vendored FLA chunk_gated_delta_rule (Triton GDN prefill path)",
    module_prefixes=(MODULES[0].rsplit(".", 1)[0] + ".",),
    kernels=KERNELS,
    default_dtypes=default_dtypes,
    token_counts=token_counts,
    runner=f"{__name__}.run",
    requires=("vllm",),
    imports=MODULES,
)


@functools.cache
def _layer_prefill():
    """The GDN layer's own ChunkGatedDeltaRule.forward_native, or the vendored op it calls where the layer's module
    cannot import. Decided once: a failed import is not cached by Python and would run again on every call."""
    try:
        from vllm.model_executor.layers.mamba.gdn import qwen_gdn_linear_attn as gdn
    except (ImportError, AttributeError, RuntimeError):
        # The layer's module imports vLLM's quantization utils, which call its compiled extension (vllm._C) at import:
        # absent where only vLLM's Python sources are (the GPU host of tests/gpu). forward_native is this one call of
        # the vendored op with the same arguments (vLLM 0.33), so the kernels and keys are the layer's.
        return _ops()[1].chunk_gated_delta_rule
    rule = object.__new__(gdn.ChunkGatedDeltaRule)   # forward_native needs no vLLM config
    return functools.partial(gdn.ChunkGatedDeltaRule.forward_native, rule)


def serve(shape: RankShape, dtypes: dict[str, str], lens: list[int], device: str) -> None:
    """One prefill batch of len(lens) sequences as vLLM's GDN layer makes it on its Triton path (_inputs), through
    the layer's own ChunkGatedDeltaRule.forward_native."""
    import torch

    prefill = _layer_prefill()
    inputs = _inputs(shape, dtypes, lens, device)
    with torch.inference_mode():
        prefill(**inputs)
