"""SGLang's vendored FLA kernels, called as SGLang's Triton GDN kernel (TritonGDNKernel.extend) calls them.

SGLang >= 0.5.23 keeps them in sglang.kernels.ops.attention.fla (earlier: sglang.srt.layers.attention.fla). Its GDN
prefill calls chunk_gated_delta_rule with g and beta from fused_gdn_gating (both fp32), the whole state pool plus
int32 slot indices, int32 cu_seqlens (query_start_loc) and use_qk_l2norm_in_kernel=True. Of the kernels on that
path only the fused kkt + solve kernel is autotuned (key H=value heads, Hg=key heads, K, BC); its key holds no
token count. Checked against SGLang 0.5.23.
"""
from __future__ import annotations

from ..models import RankShape
from . import KernelSpec, Target

MODULES = ("sglang.kernels.ops.attention.fla", "sglang.srt.layers.attention.fla")

KERNELS = (
    KernelSpec("chunk_gated_delta_rule_fwd_kkt_solve_kernel",
               lambda s, t: {"H": s.HV, "Hg": s.H, "K": s.K, "BC": 16},
               ("act", "float32", "beta", "act", "index", "index"), 6),
)


def token_counts(shape: RankShape, max_tokens: int) -> list[int]:
    return [max_tokens]   # no key holds T: tune once, at the largest prefill


def default_dtypes(shape: RankShape) -> dict[str, str]:
    return {"act": shape.dtype, "state": shape.state_dtype, "g": "float32", "beta": "float32", "index": "int32"}


def run(shape: RankShape, dtypes: dict[str, str], tokens: int, device: str) -> None:
    import importlib

    import torch

    for name in MODULES:
        try:
            chunk = importlib.import_module(f"{name}.chunk")
            break
        except ImportError:
            continue
    else:
        raise ImportError("SGLang's vendored FLA kernels not found (" + " or ".join(MODULES) + ")")
    dt = {role: getattr(torch, d) for role, d in dtypes.items()}
    q, k = (torch.randn(1, tokens, shape.H, shape.K, dtype=dt["act"], device=device) for _ in range(2))
    v = torch.randn(1, tokens, shape.HV, shape.V, dtype=dt["act"], device=device)
    g = torch.nn.functional.logsigmoid(torch.randn(1, tokens, shape.HV, device=device)).to(dt["g"])
    beta = torch.rand(1, tokens, shape.HV, device=device).sigmoid().to(dt["beta"])
    pool = torch.zeros(2, shape.HV, shape.K, shape.V, dtype=dt["state"], device=device)   # SGLang's state pool
    with torch.inference_mode():
        chunk.chunk_gated_delta_rule(
            q=q, k=k, v=v, g=g, beta=beta, initial_state=pool,
            initial_state_indices=torch.tensor([1], dtype=dt["index"], device=device),
            cu_seqlens=torch.tensor([0, tokens], dtype=dt["index"], device=device), head_first=False,
            use_qk_l2norm_in_kernel=True)


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
