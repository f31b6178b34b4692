import math

import pytest

from autotune_cache import BuildSpec, plan, shapes
from autotune_cache.errors import SpecError
from autotune_cache.targets import fla


def spec(**kw):
    return BuildSpec(model=shapes.preset(kw.pop("model", "qwen3.5-9b")), **kw)


def l2norm_nbs(unit):
    return sorted(k.fields["NB"] for k in unit.keys if k.kernel == "l2norm_fwd_kernel")


@pytest.mark.parametrize("tp,max_tokens", [(1, 16384), (1, 4097), (2, 16384), (8, 16384), (1, 1), (4, 100000)])
def test_every_l2norm_bucket_up_to_max_tokens_is_planned(tp, max_tokens):
    (unit,) = plan(spec(tp=(tp,), max_tokens=max_tokens)).units
    heads = 16 // tp
    # What a server computes for every token count it can see (fla/modules/norm/l2norm.py).
    served = {math.ceil(t * heads / 65536) for t in range(1, max_tokens + 1)}
    assert set(l2norm_nbs(unit)) == served
    # Each planned token count lands in the bucket it was planned for.
    for t in unit.tokens:
        assert t <= max_tokens
    assert list(unit.tokens) == sorted(unit.tokens, reverse=True)


def test_16k_prefill_is_a_different_key_than_4k():
    (unit,) = plan(spec(tp=(1,), max_tokens=16384)).units
    assert l2norm_nbs(unit) == [1, 2, 3, 4]
    assert 16384 in unit.tokens and 4096 in unit.tokens


def test_key_tuples_follow_triton_rules():
    (unit,) = plan(spec(tp=(1,), max_tokens=64)).units
    keys = {k.kernel: k.key for k in unit.keys}
    # Recorded on a GPU host for this exact call (FACTS.md §3; fla-core 0.6.0).
    assert keys["l2norm_fwd_kernel"] == (128, 1, "torch.bfloat16", "torch.bfloat16", "torch.float32")
    assert keys["chunk_local_cumsum_scalar_kernel"] == (1, 32, 64, True, False, "torch.float32", "torch.float32",
                                                        "torch.int64", "torch.int64")
    assert keys["chunk_gated_delta_rule_fwd_kernel_h_blockdim64"][6:] == (
        "torch.bfloat16", "torch.bfloat16", "torch.bfloat16", "torch.bfloat16", "torch.float32", "torch.bfloat16",
        "torch.float32", "torch.float32", "torch.int64", "torch.int64")
    assert sum(k.configs for k in unit.keys) == 59


def test_state_dtype_enters_the_key():
    (a,) = plan(spec(model="qwen3.5-9b", tp=(1,), max_tokens=64)).units
    (b,) = plan(spec(model="qwen3-next-80b-a3b", tp=(1,), max_tokens=64)).units
    ka = {k.kernel: k.key for k in a.keys}
    kb = {k.kernel: k.key for k in b.keys}
    assert ka["chunk_gated_delta_rule_fwd_kernel_h_blockdim64"] != kb["chunk_gated_delta_rule_fwd_kernel_h_blockdim64"]
    assert ka["chunk_fwd_kernel_o"] == kb["chunk_fwd_kernel_o"]
    assert a.id != b.id


def test_tp_degrees_make_one_unit_each_and_shared_shapes_merge():
    p = plan(spec(tp=(1, 2, 4, 8)))
    assert [u.shape.H for u in p.units] == [16, 8, 4, 2]
    assert [u.tp for u in p.units] == [(1,), (2,), (4,), (8,)]
    assert len({u.id for u in p.units}) == 4
    assert plan(spec(tp=(2, 2))).units[0].tp == (2,)


def test_extra_tokens_are_driven_but_never_beyond_max():
    (unit,) = plan(spec(tp=(8,), max_tokens=8192, tokens=(64, 512, 99999))).units
    assert unit.tokens == (8192, 512, 64)


@pytest.mark.parametrize("kw,msg", [({"tp": ()}, "at least one TP"), ({"tp": (0,)}, "positive"),
                                    ({"max_tokens": 0}, "positive"), ({"max_tokens": -5}, "positive"),
                                    ({"tokens": (-1,)}, "positive"), ({"retries": -1}, "retries"),
                                    ({"unit_timeout_s": 0}, "timeout")])
def test_bad_spec(kw, msg):
    with pytest.raises((SpecError, ValueError), match=msg):
        spec(**kw)


def test_unknown_target():
    with pytest.raises(SpecError, match="unknown target 'nope'"):
        plan(spec(targets=("nope",)))


def test_token_counts_hit_each_bucket_exactly():
    shape = shapes.preset("qwen3.5-27b").per_rank(1)
    counts = fla.token_counts(shape, 20000)
    assert [fla._nb(shape, t) for t in counts] == list(range(1, len(counts) + 1))
