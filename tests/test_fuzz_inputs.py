"""Property-based fuzzing of what a user hands the tool: generated config.json contents through shapes.from_config,
generated numeric flags through the CLI's parser and spec_from_args, and generated sizes through ModelShape and
BuildSpec. Nothing may raise but the errors a user can act on (ConfigError, SpecError, UnknownModelError), whatever
is accepted lies within its bounds, and a plan of an accepted spec never exceeds the plan's. Each test stays under
~20 s on 2 cores (`--hypothesis-show-statistics` prints how many examples ran, and why each was refused); no
example database is kept."""
import json

import pytest

pytest.importorskip("hypothesis")
from helpers import examples  # noqa: E402
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st

from autotune_cache import shapes  # noqa: E402
from autotune_cache.builder.plan import plan  # noqa: E402
from autotune_cache.builder.selection import MAX_PROBES  # noqa: E402
from autotune_cache.builder.spec import (  # noqa: E402
    MAX_GPUS,
    MAX_PLAN_CALLS,
    MAX_PLAN_KEYS,
    MAX_RETRIES,
    MAX_UNIT_TIMEOUT_S,
    BuildSpec,
)
from autotune_cache.cli import parser  # noqa: E402
from autotune_cache.cli.args import spec_from_args  # noqa: E402
from autotune_cache.errors import ConfigError, SpecError, UnknownModelError  # noqa: E402
from autotune_cache.shapes import CONFIG_MAX_BYTES, DTYPES, MAX_HEAD_DIM, MAX_HEADS, MAX_TOKENS, MAX_TP, SIZES  # noqa: E402

TYPED = (ConfigError, SpecError, UnknownModelError)
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# -- values -----------------------------------------------------------------------------------------------------
BOUNDS = (MAX_HEADS, MAX_HEAD_DIM, MAX_TP, MAX_TOKENS, MAX_RETRIES, MAX_GPUS, MAX_PROBES)
# around every bound, and the sizes of real models
EDGES = st.sampled_from(sorted({e for b in BOUNDS for e in (b - 1, b, b + 1)} | {-1, 0, 1, 2, 16, 32, 48, 64, 128,
                                                                                 2 ** 31, 2 ** 63, 10 ** 30}))
INTS = st.integers(-3, 70) | EDGES | st.integers()
# Mostly within bounds, so that a good share of the examples is accepted and planned.
HEADS_IN = (st.sampled_from([1, 2, 4, 8, 16, 32, 48, 64]) | st.sampled_from([640, 1024, 2048, MAX_HEADS])
            | st.integers(1, MAX_HEADS))   # large ones too: 4096 heads at 1M tokens is past the plan's bounds
DIMS_IN = st.sampled_from([64, 128, 256, MAX_HEAD_DIM]) | st.integers(1, MAX_HEAD_DIM)
HEADS, DIMS = HEADS_IN | INTS, DIMS_IN | INTS
DIVISORS = st.sampled_from([1, 2, 4, 8, 16])   # TP degrees that split most of the heads above
TPS = DIVISORS | DIVISORS | st.sampled_from([3, MAX_TP]) | INTS
TOKENS = st.integers(1, MAX_TOKENS) | st.integers(1, 70_000) | INTS
FLOATS = st.floats() | st.sampled_from([0.0, 0.02, 0.999, 1.0, MAX_UNIT_TIMEOUT_S, MAX_UNIT_TIMEOUT_S * 2, 1e-300])
JSON = st.recursive(st.none() | st.booleans() | INTS | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
                    max_leaves=25)
VALID_DTYPE = st.sampled_from(sorted(DTYPES) + ["torch.bfloat16", "Float32"])
DTYPE = VALID_DTYPE | VALID_DTYPE | st.sampled_from(["float8", ""]) | JSON
SIZE = {"num_k_heads": HEADS, "num_v_heads": HEADS, "head_k_dim": DIMS, "head_v_dim": DIMS}
SIZE_IN = {"num_k_heads": HEADS_IN, "num_v_heads": HEADS_IN, "head_k_dim": DIMS_IN, "head_v_dim": DIMS_IN}
GDN = st.fixed_dictionaries({field: st.one_of(*[SIZE[size]] * 3, JSON) for size, (field, _) in SIZES.items()},
                            optional={"torch_dtype": DTYPE, "dtype": DTYPE, "mamba_ssm_dtype": DTYPE,
                                      "_name_or_path": st.text(max_size=30) | JSON})
CONFIG = GDN | GDN | st.fixed_dictionaries({"text_config": GDN | JSON}, optional={"torch_dtype": DTYPE}) | JSON


@st.composite
def config_bytes(draw) -> bytes:
    """A config.json: JSON of a GDN-like or any shape, sometimes padded past half the cap or cut short, or
    arbitrary bytes, or brackets nested deeper than Python's recursion limit."""
    kind = draw(st.sampled_from(["config"] * 5 + ["cut", "bytes", "nested"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "nested":
        depth = draw(st.integers(1, 50_000))
        return ("[" * depth + "]" * depth).encode()
    text = json.dumps(draw(CONFIG))   # NaN and Infinity as Python writes them: json.loads reads them back
    if kind == "cut":
        text = text[:draw(st.integers(0, len(text)))]
    pad = draw(st.sampled_from([0, 0, 0, 7, CONFIG_MAX_BYTES // 2, CONFIG_MAX_BYTES - len(text)]))
    return (text + " " * max(pad, 0)).encode()


def refused(e: Exception) -> None:
    # --hypothesis-show-statistics counts the reasons (the config's path left out)
    event(f"refused: {type(e).__name__}: {str(e).split('config.json: ')[-1][:45]}")


def assert_plan_bounded(spec: BuildSpec) -> None:
    """A plan of `spec` is refused (SpecError) or stays within MAX_PLAN_CALLS and MAX_PLAN_KEYS."""
    try:
        p = plan(spec)
    except SpecError as e:
        event("accepted, plan refused" + (": too large" if "the most a plan may have" in str(e) else ""))
        return
    event("accepted and planned")
    assert sum(len(u.tokens) for u in p.units) <= MAX_PLAN_CALLS and p.keys <= MAX_PLAN_KEYS


def assert_shape_bounded(shape: shapes.ModelShape) -> None:
    assert 1 <= min(shape.num_k_heads, shape.num_v_heads) and max(shape.num_k_heads, shape.num_v_heads) <= MAX_HEADS
    assert 1 <= min(shape.head_k_dim, shape.head_v_dim) and max(shape.head_k_dim, shape.head_v_dim) <= MAX_HEAD_DIM


# -- config.json ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "config.json"


@settings(FUZZ, max_examples=examples(800))
@given(content=config_bytes())
def test_any_config_json_is_a_model_or_a_config_error(config_path, content):
    config_path.write_bytes(content)
    try:
        shape = shapes.from_config(config_path)
    except TYPED as e:
        return refused(e)
    assert len(content) <= CONFIG_MAX_BYTES
    assert_shape_bounded(shape)
    assert shape.dtype in DTYPES.values() and shape.state_dtype in DTYPES.values()
    assert_plan_bounded(BuildSpec(model=shape))


# -- CLI flags --------------------------------------------------------------------------------------------------
def int_list(values):
    return (st.lists(values, max_size=20).map(lambda xs: ",".join(map(str, xs)))
            | st.text(alphabet="0123456789,- x+_", max_size=30))


FLAGS = st.fixed_dictionaries({}, optional={
    "--max-tokens": TOKENS, "--tokens": int_list(TOKENS), "--tp": int_list(TPS),
    "--retries": st.integers(0, MAX_RETRIES) | INTS, "--gpus": st.integers(1, MAX_GPUS) | INTS,
    "--timeout": st.floats(1, MAX_UNIT_TIMEOUT_S) | FLOATS, "--noise": st.floats(0, 0.999) | FLOATS,
    "--probe-tokens": int_list(TOKENS) | st.just("none")})


@settings(FUZZ, max_examples=examples(1000))
@given(flags=FLAGS)
def test_any_numeric_flags_make_a_bounded_spec_or_a_spec_error(flags):
    # --flag=value: a value starting with "-" would otherwise read as another option
    args = parser().parse_args(["build", "--cache-dir", "unused", "--emulate", *(f"{k}={v}" for k, v in flags.items())])
    try:
        spec = spec_from_args(args)
    except TYPED as e:
        return refused(e)
    assert 1 <= spec.max_tokens <= MAX_TOKENS and all(1 <= t <= MAX_TOKENS for t in spec.tokens)
    assert spec.tp and all(1 <= t <= MAX_TP for t in spec.tp)
    assert 0 <= spec.retries <= MAX_RETRIES and (spec.gpus is None or 1 <= spec.gpus <= MAX_GPUS)
    assert 0 < spec.unit_timeout_s <= MAX_UNIT_TIMEOUT_S and 0 <= spec.selection.noise < 1
    assert len(spec.selection.probe_tokens) <= MAX_PROBES
    assert all(1 <= t <= MAX_TOKENS for t in spec.selection.probe_tokens)
    assert_plan_bounded(spec)


# -- the Python API ---------------------------------------------------------------------------------------------
@st.composite
def spec_fields(draw) -> tuple[dict, dict]:
    """(ModelShape sizes, BuildSpec fields): within every bound, anything, or large enough (thousands of heads near
    1M tokens at TP 1 or 2) that only the plan's own bounds can refuse them."""
    kind = draw(st.sampled_from(["within", "any", "large"]))
    if kind == "large":
        sizes = {"num_k_heads": draw(st.sampled_from([1024, 2048, MAX_HEADS])), "num_v_heads": MAX_HEADS}
        return sizes, {"tp": (draw(st.sampled_from([1, 2])),), "max_tokens": draw(st.integers(MAX_TOKENS // 2,
                                                                                             MAX_TOKENS))}
    within = kind == "within"
    sizes = draw(st.fixed_dictionaries(SIZE_IN if within else SIZE))
    fields = {"tp": tuple(draw(st.lists(DIVISORS if within else TPS, min_size=1, max_size=4))),
              "max_tokens": draw(st.integers(1, MAX_TOKENS) if within else TOKENS),
              "tokens": tuple(draw(st.lists(st.integers(1, MAX_TOKENS) if within else TOKENS, max_size=8)))}
    return sizes, fields


@settings(FUZZ, max_examples=examples(1000))
@given(fields=spec_fields(),
       targets=st.lists(st.sampled_from(["fla", "vllm", "sglang"]), min_size=1, max_size=3, unique=True))
def test_any_sizes_make_a_bounded_plan_or_a_spec_error(fields, targets):
    sizes, spec = fields
    try:
        shape = shapes.ModelShape(name="fuzz", **sizes)
        spec = BuildSpec(model=shape, targets=tuple(targets), **spec)
    except TYPED as e:
        return refused(e)
    assert_shape_bounded(shape)
    assert_plan_bounded(spec)
