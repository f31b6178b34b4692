"""How the build picks a winner: a short screening pass over every config, then the close candidates again.

Triton's autotuner times each config once (do_bench: 25 ms warm-up, 100 ms of repetitions) and keeps the minimum.
Near-ties then go whichever way the noise of that one run goes (two builds disagreed on 3 of 6 kernels). The
build child instead
  1. screens every config with a shorter do_bench (Settings.screen_warmup_ms / screen_rep_ms),
  2. times the candidates again, `rounds` more times, interleaved, so drift hits them alike, and takes each one's
     median. The candidates: the fastest `top` within `window` of the fastest, plus the first config of the
     kernel's own list within that window (the incumbent below: timed every build, whatever the screening's luck;
     when twenty l2norm configs lay within 1%, the top 4 differed from build to build and so did the winner),
  3. keeps the incumbent -- the candidate listed first in the kernel's own config list -- unless a challenger
     beats it beyond noise: by more than `noise` (and more than `floor_us`) on the medians, and with the bulk of
     its timings (p80) below the bulk of the incumbent's (p20). Within the noise the choice is fixed by list order,
     not by luck. (The second condition came from the GPU: the medians of 6-40 us kernels moved by 2-3% between
     builds, so a 2% band alone let 4 of 24 winners differ across 3 builds. The floor: a 10 us kernel's timings
     took two values 0.26-0.29 us apart in every config, so two equal configs differed by 2.6% by chance.)

A key tuned at one token count serves every token count of its bucket (a key without T: every prefill; l2norm's
NB = 1: every T up to 4096 at TP 1), and the config fastest at the largest one can be slow at a small one (on an
H100 the l2norm winner at 4096 tokens was 20% slower at 512 than the T=64 winner: too few blocks). So before a
unit's own calls the child drives it at each of `probe_tokens` (smaller than the unit's largest count) in a dry
pass (disk.dry: benchmarked, nothing written): every config of every key that call reaches is screened
there too, with its arguments kept. When the key is then tuned, the candidates are ranked by their worst loss over
the token counts measured (time / that count's best), re-timed at each of them, and the incumbent is kept unless
the fastest by that measure beats it beyond noise at some token count.

What Triton reads back is the autotune JSON (winner = the smallest timing), so the file records the decision:
each candidate's median (p20/p80 of its rounds) at the key's own token count, and, where the winner is not the
fastest there, the winner gets the smallest numbers of the file and is listed first (`min` keeps the first of
equal values). Every candidate's own samples (and its probe samples) go to the manifest (Entry.selection), so
nothing measured is lost.

`choose` and `shortlist` are pure; `install` (build child only) hooks them on Triton's Autotuner (autotuner/).
"""
from __future__ import annotations

import contextlib
import functools
import statistics
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..autotuner import disk, hooks, timing
from ..autotuner.kernels import innermost_jit
from ..errors import shown
from ..shapes import MAX_TOKENS, whole

INF = float("inf")
MAX_PROBES = 16   # probe token counts: each is one more dry pass over every unit


class Settings(BaseModel):
    """mode "robust": the steps above; "triton": Triton's own single timing pass and min (what a server does)."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["robust", "triton"] = "robust"
    top: int = Field(4, ge=2)                 # candidates timed again
    window: float = Field(0.10, ge=0)         # ... within this fraction of the screening's fastest
    rounds: int = Field(4, ge=1)              # extra timings per candidate
    noise: float = 0.02                       # a challenger must beat the incumbent by more than this (< 1)
    floor_us: float = Field(0.3, ge=0)        # ... and by more than this many microseconds
    screen_warmup_ms: float = Field(10.0, gt=0)
    screen_rep_ms: float = Field(25.0, gt=0)
    rep_ms: float = Field(25.0, gt=0)         # each extra timing
    # Token counts to screen every key at too, besides the one it is tuned at (each below the unit's largest);
    # () = none. 512: the smallest prefill the winner-quality benchmark measures; smaller calls are launch-bound.
    probe_tokens: tuple[int, ...] = (512,)
    probe_warmup_ms: float = Field(5.0, gt=0)   # probe timings: kernels of a few microseconds,
    probe_rep_ms: float = Field(10.0, gt=0)     # so thousands of repetitions all the same

    # The messages of the two a flag sets name the flag and the bound: the CLI prints them as they are.
    @field_validator("noise")
    @classmethod
    def _noise(cls, v):
        if not 0 <= v < 1:   # NaN too
            raise ValueError(f"--noise must be at least 0 and less than 1, got {v}")
        return v

    @field_validator("probe_tokens")
    @classmethod
    def _probe_tokens(cls, v):
        if len(set(v)) > MAX_PROBES:
            raise ValueError(f"--probe-tokens: at most {MAX_PROBES} probe token counts, got {len(set(v))}")
        if any(isinstance(t, bool) or t < 1 for t in v):
            raise ValueError(f"probe token counts must be positive integers, got {shown(list(v))}")
        return tuple(sorted({whole(t, "each probe token count", high=MAX_TOKENS, error=ValueError) for t in v}))


@dataclass(frozen=True)
class Candidate:
    order: int                    # position in the kernel's config list (the incumbent is the lowest)
    samples: tuple[float, ...]    # p50 of each timing at the key's token count, in ms (screening first)
    probes: tuple[tuple[float, ...], ...] = ()   # the same at each probe token count (all candidates alike)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def series(self) -> tuple[tuple[float, ...], ...]:
        return (self.samples, *self.probes)


@dataclass(frozen=True)
class Decision:
    winner: int                   # index into the candidates given to choose()
    fastest: int                  # the candidate with the smallest worst loss (one token count: median)
    band: tuple[int, ...]         # candidates the fastest does not beat beyond noise at any token count
    medians: tuple[float, ...] = field(default=())   # at the key's own token count
    losses: tuple[float, ...] = field(default=())    # worst over the token counts of median / that count's best

    @property
    def kept_incumbent(self) -> bool:
        return self.winner != self.fastest


def choose(candidates: list[Candidate], noise: float, floor: float = 0.0) -> Decision:
    """The fastest is the candidate with the smallest worst loss over the token counts measured (with one: the
    smallest median). The winner is the incumbent (lowest `order`) among the candidates the fastest does not beat
    beyond noise at any token count: beating means a median smaller by more than `noise` (a fraction) and more
    than `floor` (ms), and timings that do not overlap (the fastest's p80 below the other's p20)."""
    if not candidates:
        raise ValueError("no candidates")
    if len({len(c.probes) for c in candidates}) != 1:
        raise ValueError("candidates timed at different token counts")
    meds = [[statistics.median(s) for s in c.series] for c in candidates]
    best = [min(m[j] for m in meds) for j in range(len(meds[0]))]
    losses = tuple(max(m[j] / best[j] if best[j] > 0 else 1.0 for j in range(len(m))) for m in meds)
    fastest = min(range(len(candidates)), key=lambda i: (losses[i], candidates[i].order))

    def beaten(i: int, j: int) -> bool:
        f, c = meds[fastest][j], meds[i][j]
        if c <= max(f * (1 + noise), f + floor):
            return False
        return _spread(candidates[i].series[j])[1] > _spread(candidates[fastest].series[j])[2]

    band = tuple(i for i in range(len(candidates)) if not any(beaten(i, j) for j in range(len(best))))
    winner = min(band, key=lambda i: candidates[i].order)
    return Decision(winner=winner, fastest=fastest, band=band, medians=tuple(m[0] for m in meds), losses=losses)


def screen_losses(timings: dict, probes: tuple[dict, ...] = ()) -> dict:
    """config -> its worst loss in the screening: max over the token counts of p50 / that count's best p50, from
    `timings` (config -> p50 or [p50, p20, p80], in the kernel's list order) and each probe's {str(config): p50}.
    Configs that failed (inf) or were not timed at a probe are left out."""
    def p50s(c) -> list[float]:
        return [_p50(timings[c])] + [p.get(str(c), INF) for p in probes]

    finite = [c for c in timings if INF not in p50s(c)]
    if not finite:
        return {}
    best = [min(p50s(c)[j] for c in finite) for j in range(1 + len(probes))]
    return {c: max(x / b if b > 0 else 1.0 for x, b in zip(p50s(c), best, strict=True)) for c in finite}


def shortlist(loss: dict, settings: Settings) -> list:
    """The configs worth timing again, from their worst screening losses (screen_losses, in list order): the best
    `top` within `window` of the smallest, plus the first config in list order within the window."""
    if not loss:
        return []
    smallest = min(loss.values())
    within = [c for c in loss if loss[c] <= smallest * (1 + settings.window)]   # list order
    picked = sorted(within, key=lambda c: loss[c])[:settings.top]
    return picked if within[0] in picked else [*picked, within[0]]


def _p50(t) -> float:
    return t[0] if isinstance(t, (list, tuple)) else t


def _spread(samples) -> list[float]:
    """[p50, p20, p80] of the samples, Triton's layout."""
    s = sorted(samples)
    if len(s) == 1:
        return [s[0]] * 3
    q = statistics.quantiles(s, n=5, method="inclusive")
    return [statistics.median(s), q[0], q[3]]


# -- the build child's side ---------------------------------------------------------------------------------------
# (kernel, key) -> what was decided, for the child to send along with the lookup; filled by refine().
decisions: dict[tuple, dict] = {}


@dataclass
class Probe:
    """A key's screening at a probe token count, with the arguments of that call kept to time it again."""
    tokens: int
    nargs: dict                  # the kernel's arguments by name (tensors of the probe call, kept alive)
    kwargs: dict                 # run()'s keyword arguments (grid, ...)
    timings: dict[str, float]    # str(config) -> p50


# (kernel, key) -> the probes of the unit being built; the child clears it per unit.
probes: dict[tuple, list[Probe]] = {}
_probing: list[int] = []   # the token count of the probe pass the child is driving, if any


@contextlib.contextmanager
def probing(tokens: int):
    """The child's probe pass: lookups inside are dry (disk.dry) and every miss is kept in `probes`."""
    _probing.append(tokens)
    try:
        with disk.dry():
            yield
    finally:
        _probing.pop()


def _record_probe(tuner, tuning_key: tuple) -> None:
    kwargs = getattr(tuner, "_autotune_cache_run_kwargs", None)
    if kwargs is None or tuner.nargs is None:
        return
    probes.setdefault((innermost_jit(tuner.fn).__name__, tuple(tuning_key)), []).append(Probe(
        tokens=_probing[-1], nargs=dict(tuner.nargs), kwargs=dict(kwargs),
        timings={str(c): _p50(t) for c, t in tuner.configs_timings.items()}))


@contextlib.contextmanager
def _budget(tuner, warmup_ms: float, rep_ms: float):
    """Time with this do_bench budget inside the block, where the autotuner uses the driver's benchmarker."""
    bench = tuner.__dict__.get("_autotune_cache_bench")
    if bench is None:
        yield
        return
    previous = timing.own_do_bench(tuner)
    timing.set_do_bench(tuner, functools.partial(bench, warmup=warmup_ms, rep=rep_ms))
    try:
        yield
    finally:
        timing.set_do_bench(tuner, previous)


def refine(tuner, tuning_key: tuple, settings: Settings) -> None:
    """After Triton's (screening) benchmark of a miss: time the shortlist again, here and at the key's probes,
    and fix the winner."""
    kernel = innermost_jit(tuner.fn).__name__
    key_probes = probes.pop((kernel, tuple(tuning_key)), [])
    timings = dict(tuner.configs_timings)
    kwargs = getattr(tuner, "_autotune_cache_run_kwargs", None)
    screened = screen_losses(timings, tuple(p.timings for p in key_probes))
    cands = shortlist(screened, settings)
    if kwargs is None or tuner.nargs is None or len(cands) < (1 if key_probes else 2):
        return   # one candidate and no probe: Triton's own minimum is it
    nargs = tuner.nargs
    args = list(nargs.values())   # run()'s positional arguments, in order
    samples = {c: [_p50(timings[c])] for c in cands}
    at_probe = [{c: [p.timings[str(c)]] for c in cands} for p in key_probes]
    try:
        for r in range(settings.rounds if len(cands) > 1 else 0):
            order = cands if r % 2 == 0 else cands[::-1]   # alternate: drift hits both ends alike
            with _budget(tuner, settings.screen_warmup_ms, settings.rep_ms):
                for c in order:
                    samples[c].append(_p50(timing.time_config(tuner, args, c, kwargs)))
            for probe, measured in zip(key_probes, at_probe, strict=True):
                tuner.nargs = probe.nargs   # Triton's pre/post hooks (reset_to_zero, restore_value) read nargs
                with _budget(tuner, settings.probe_warmup_ms, settings.probe_rep_ms):
                    for c in order:
                        again = timing.time_config(tuner, list(probe.nargs.values()), c, probe.kwargs)
                        measured[c].append(_p50(again))
                tuner.nargs = nargs
    finally:
        tuner.nargs = nargs
    candidates = [Candidate(order=_order(tuner.configs, c), samples=tuple(samples[c]),
                            probes=tuple(tuple(m[c]) for m in at_probe)) for c in cands]
    decision = choose(candidates, settings.noise, settings.floor_us / 1000)
    winner = cands[decision.winner]
    for c in cands:
        timings[c] = _spread(samples[c])
    finite = [t for t in timings.values() if isinstance(t, (list, tuple)) and t[0] != INF]
    if any(t < timings[winner] for t in finite):   # the file must make Triton's min() land on the winner
        timings[winner] = [min(t[j] for t in finite) for j in range(3)]
    tuner.configs_timings = {winner: timings[winner], **{c: t for c, t in timings.items() if c is not winner}}
    tuner.cache[tuning_key] = winner
    # Triton resets reset_to_zero arguments after its benchmark; the extra timings dirtied them again.
    tuner.pre_hook({**nargs, **kwargs, **winner.all_kwargs()}, reset_only=True)
    decisions[(kernel, tuple(tuning_key))] = {
        "noise": settings.noise, "floor_us": settings.floor_us, "kept_incumbent": decision.kept_incumbent,
        "probe_tokens": [p.tokens for p in key_probes],
        # every config's screening at each probe (the key's own screening is the autotune file's); None = failed
        "probe_screening": [{"tokens": p.tokens,
                             "p50": {text: round(t, 6) if t != INF else None for text, t in p.timings.items()}}
                            for p in key_probes],
        "candidates": [{"config": _config_dict(c), "order": cand.order, "median": round(cand.median, 6),
                        "samples": [round(x, 6) for x in cand.samples],
                        **({"probes": [{"tokens": p.tokens, "median": round(statistics.median(s), 6),
                                        "samples": [round(x, 6) for x in s]}
                                       for p, s in zip(key_probes, cand.probes, strict=True)]} if key_probes else {}),
                        "loss": round(loss, 6),                  # worst over the sizes, among the candidates
                        "screen_loss": round(screened[c], 6)}    # ... in the screening, among every config
                       for c, cand, loss in zip(cands, candidates, decision.losses, strict=True)],
    }


def _order(configs, config) -> int:
    """Position in the kernel's config list; a pruner may hand back copies, so equal text counts too."""
    for i, c in enumerate(configs):
        if c is config:
            return i
    text = str(config)
    return next((i for i, c in enumerate(configs) if str(c) == text), len(configs))


def _config_dict(config) -> dict:
    """The config as the autotune JSON spells it (config.__dict__), without the unserializable pre_hook."""
    return {k: v for k, v in config.__dict__.items() if k != "pre_hook"}


_settings: Settings | None = None   # the child's, installed once per process


def _prune_configs(call, tuner, kwargs):
    """Before Triton's pruning: remember run()'s keyword arguments (grid, warmup, ...), needed to time a config
    again and seen by no other hook, and give an autotuner timing with the driver's benchmarker the screening
    budget (the probe budget inside a probe pass)."""
    settings = _settings
    assert settings is not None   # hooked by install()
    tuner._autotune_cache_run_kwargs = kwargs
    if "_autotune_cache_bench" not in tuner.__dict__:
        bench = timing.driver_benchmarker(tuner)
        if bench is not None:
            tuner.__dict__["_autotune_cache_bench"] = bench
    bench = tuner.__dict__.get("_autotune_cache_bench")
    if bench is not None:
        warmup, rep = ((settings.probe_warmup_ms, settings.probe_rep_ms) if _probing else
                       (settings.screen_warmup_ms, settings.screen_rep_ms))
        timing.set_do_bench(tuner, functools.partial(bench, warmup=warmup, rep=rep))
    return call(tuner, kwargs)


def _after_bench(tuner, tuning_key) -> None:
    if _probing:
        _record_probe(tuner, tuning_key)
    else:
        assert _settings is not None   # hooked by install()
        refine(tuner, tuning_key, _settings)


def use(settings: Settings) -> None:
    """In the build child: shorter screening timings for autotuners that bring no benchmarker of their own (the
    probe budget inside a probe pass), and after every benchmark of a disk-cache miss: refine(), or in a probe
    pass, keep what it measured. The first settings installed stay."""
    global _settings
    if settings.mode != "robust" or _settings is not None:
        return
    _settings = settings
    hooks.add("selection", "prune_configs", _prune_configs)
    disk.add_bench_hook(_after_bench, phase="selection")
