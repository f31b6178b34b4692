"""SGLang's vendored FLA kernels, called as SGLang's Triton GDN kernel (TritonGDNKernel.extend) calls them.

SGLang >= 0.5.23 keeps them in sglang.kernels.ops.attention.fla. Earlier versions kept them in
sglang.srt.layers.attention.fla, whose keys were never checked: refused (UnsupportedEngineError). Its GDN
prefill calls chunk_gated_delta_rule with g and beta from fused_gdn_gating (both fp32), the whole state pool plus
int32 slot indices, int32 cu_seqlens (query_start_loc) and use_qk_l2norm_in_kernel=True: run() and serve() call
TritonGDNKernel.extend itself, after fused_gdn_gating. Of the kernels on that
path only the fused kkt + solve kernel is autotuned (key H=value heads, Hg=key heads, K, BC); its key holds no
token count. Checked against SGLang 0.5.23.
"""
from __future__ import annotations

from ..shapes import RankShape
from . import KernelSpec, Target, refuse_older_layout

MODULES = ("sglang.kernels.ops.attention.fla",)
OLD_MODULE = "sglang.srt.layers.attention.fla.chunk"   # SGLang < 0.5.23
SUPPORTED = "SGLang >= 0.5.23 (keys checked with 0.5.23)"

KERNELS = (
    KernelSpec("chunk_gated_delta_rule_fwd_kkt_solve_kernel",
               lambda s, t: {"H": s.HV, "Hg": s.H, "K": s.K, "BC": 16},
               ("act", "float32", "beta", "act", "index", "index"), 6),
)


# Kernels on the path that are never tuned still compile one variant per value of a size-derived constexpr: chunk_h
# takes NT_BUCKET (0 up to 32 chunks of 64 tokens, 1 up to 128, 2 beyond), chunk_o BT = min(64, max(16,
# next_power_of_2(T))) (16, 32, 64). The build drives one call per variant below the largest prefill, so the server
# compiles nothing at any size.
VARIANT_TOKENS = (16, 32, 2048, 8192)


def token_counts(shape: RankShape, max_tokens: int) -> list[int]:
    # No key holds T: the key is tuned once, at the largest prefill (the plan drives the largest first).
    return [max_tokens] + [t for t in VARIANT_TOKENS if t < max_tokens]


def default_dtypes(shape: RankShape) -> dict[str, str]:
    return {"act": shape.dtype, "state": shape.state_dtype, "g": "float32", "beta": "float32", "index": "int32"}


def _chunk():
    import importlib

    try:
        return importlib.import_module(f"{MODULES[0]}.chunk")
    except ImportError:
        refuse_older_layout(OLD_MODULE, "sglang", SUPPORTED)
        raise


def run(shape: RankShape, dtypes: dict[str, str], tokens: int, device: str) -> None:
    serve(shape, dtypes, [tokens], device)   # one request: what the layer runs, gating kernel included


TARGET = Target(
    name="sglang",
    description="SGLang's vendored FLA chunk_gated_delta_rule (Triton GDN prefill)",
    module_prefixes=tuple(m + "." for m in MODULES),
    kernels=KERNELS,
    default_dtypes=default_dtypes,
    token_counts=token_counts,
    runner=f"{__name__}.run",
    requires=("sglang",),
    imports=(MODULES[0] + ".chunk",),
)


def serve(shape: RankShape, dtypes: dict[str, str], lens: list[int], device: str) -> None:
    """One extend batch of len(lens) requests as SGLang's GDN layer makes it: TritonGDNKernel.extend (its Triton
    prefill) with the state pool, a slot per request, int32 query_start_loc, g and beta from fused_gdn_gating."""
    import torch
    _chunk()   # an older SGLang's layout: UnsupportedEngineError, before any import of the new one fails
    from sglang.kernels.ops.attention.linear.fused_gdn_gating import fused_gdn_gating
    from sglang.srt.layers.attention.linear.kernels.gdn_triton import TritonGDNKernel

    dt = {role: getattr(torch, d) for role, d in dtypes.items()}
    T, n = sum(lens), len(lens)
    a, b = (torch.randn(T, shape.HV, dtype=dt["act"], device=device) for _ in range(2))
    g, beta = fused_gdn_gating(torch.randn(shape.HV, device=device), a, b,
                               torch.randn(shape.HV, dtype=dt["act"], device=device))
    q, k = (torch.randn(1, T, shape.H, shape.K, dtype=dt["act"], device=device) for _ in range(2))
    v = torch.randn(1, T, shape.HV, shape.V, dtype=dt["act"], device=device)
    pool = torch.zeros(n + 1, shape.HV, shape.K, shape.V, dtype=dt["state"], device=device)
    starts = torch.tensor([0, *lens], dtype=dt["index"]).cumsum(0, dtype=dt["index"]).to(device)
    with torch.inference_mode():
        TritonGDNKernel().extend(q, k, v, g, beta, ssm_states=pool, query_start_loc=starts,
                                 cache_indices=torch.arange(1, n + 1, dtype=dt["index"], device=device))
