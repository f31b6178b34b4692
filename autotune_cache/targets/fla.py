"""Upstream flash-linear-attention (fla-core): `chunk_gated_delta_rule` forward, varlen, as servers call it."""
from __future__ import annotations

from ..shapes import RankShape
from . import KernelSpec, Target

# fla/modules/norm/l2norm.py: x is viewed as (T * heads, D) and NB = cdiv(rows, 2048 * 32) is a key field.
L2NORM_ROWS_PER_NB = 65536
BT = 64  # FLA's chunk size for GDN


def _nb(shape: RankShape, tokens: int) -> int:
    return -(-tokens * shape.H // L2NORM_ROWS_PER_NB)


KERNELS = (
    KernelSpec("l2norm_fwd_kernel", lambda s, t: {"D": s.K, "NB": _nb(s, t)},
               ("act", "act", "float32"), 25),
    KernelSpec("chunk_local_cumsum_scalar_kernel",
               lambda s, t: {"B": 1, "H": s.HV, "BT": BT, "IS_VARLEN": True, "REVERSE": False},
               ("g", "float32", "index", "index"), 4),
    KernelSpec("chunk_gated_delta_rule_fwd_kkt_solve_kernel",
               lambda s, t: {"H": s.H, "HV": s.HV, "K": s.K, "BC": 16},
               ("act", "float32", "beta", "act", "index", "index"), 6),
    KernelSpec("recompute_w_u_fwd_kernel",
               lambda s, t: {"H": s.H, "HV": s.HV, "K": s.K, "V": s.V, "BT": BT, "BK": 64, "BV": 64,
                             "IS_VARLEN": True},
               ("act", "act", "beta", "act", "act", "act", "float32", "index", "index"), 9),
    KernelSpec("chunk_gated_delta_rule_fwd_kernel_h_blockdim64",
               lambda s, t: {"H": s.H, "HV": s.HV, "K": s.K, "V": s.V, "BT": BT, "STATE_V_FIRST": False},
               ("act", "act", "act", "act", "float32", "act", "state", "float32", "index", "index"), 12),
    KernelSpec("chunk_fwd_kernel_o",
               lambda s, t: {"H": s.H, "HV": s.HV, "K": s.K, "V": s.V, "BT": BT, "STATE_V_FIRST": False},
               ("act", "act", "act", "act", "float32", "act", "index", "index"), 3),
)


def token_counts(shape: RankShape, max_tokens: int) -> list[int]:
    """The largest token count of every l2norm NB bucket up to max_tokens (the only token-dependent key)."""
    return [min(nb * L2NORM_ROWS_PER_NB // shape.H, max_tokens) for nb in range(1, _nb(shape, max_tokens) + 1)]


def default_dtypes(shape: RankShape) -> dict[str, str]:
    # FLA's layers pass g as fp32 (logsigmoid output), beta in the activation dtype, cu_seqlens as int64.
    return {"act": shape.dtype, "state": shape.state_dtype, "g": "float32", "beta": shape.dtype, "index": "int64"}


def run(shape: RankShape, dtypes: dict[str, str], tokens: int, device: str) -> None:
    import torch
    import torch.nn.functional as F
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    dt = {role: getattr(torch, name) for role, name in dtypes.items()}
    q = torch.randn(1, tokens, shape.H, shape.K, dtype=dt["act"], device=device)
    k = torch.randn(1, tokens, shape.H, shape.K, dtype=dt["act"], device=device)
    v = torch.randn(1, tokens, shape.HV, shape.V, dtype=dt["act"], device=device)
    g = F.logsigmoid(torch.randn(1, tokens, shape.HV, dtype=torch.float32, device=device)).to(dt["g"])
    beta = torch.rand(1, tokens, shape.HV, dtype=torch.float32, device=device).sigmoid().to(dt["beta"])
    h0 = torch.zeros(1, shape.HV, shape.K, shape.V, dtype=dt["state"], device=device)
    cu_seqlens = torch.tensor([0, tokens], dtype=dt["index"], device=device)
    with torch.inference_mode():
        chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                               use_qk_l2norm_in_kernel=True, cu_seqlens=cu_seqlens)


TARGET = Target(
    name="fla",
    description="upstream flash-linear-attention (fla-core) chunk_gated_delta_rule forward",
    module_prefixes=("fla.",),
    kernels=KERNELS,
    default_dtypes=default_dtypes,
    token_counts=token_counts,
    runner=f"{__name__}.run",
    requires=("fla-core",),
    imports=("fla.ops.gated_delta_rule",),
)
