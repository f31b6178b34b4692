"""How the build picks a winner: a short screening pass over every config, then the close candidates again.

Triton's autotuner times each config once (do_bench: 25 ms warm-up, 100 ms of repetitions) and keeps the minimum.
Near-ties then go whichever way the noise of that one run goes (two builds disagreed on 3 of 6 kernels). The
build child instead
  1. screens every config with a shorter do_bench (Settings.screen_warmup_ms / screen_rep_ms),
  2. times the candidates within `window` of the fastest (at most `top`) `rounds` more times, interleaved, so
     drift hits them alike, and takes each one's median,
  3. keeps the incumbent -- the candidate listed first in the kernel's own config list -- unless a challenger
     beats it beyond noise: by more than `noise` on the medians, and with the bulk of its timings (p80) below the
     bulk of the incumbent's (p20). Within the noise the choice is fixed by list order, not by luck. (The second
     condition came from the GPU: the medians of 6-40 us kernels moved by 2-3% between builds, so a 2% band
     alone let 4 of 24 winners differ across 3 builds; with it, 3 of 24 in the next 3 builds, which three builds
     cannot tell from noise; BENCHMARKS.md.)

What Triton reads back is the autotune JSON (winner = the smallest timing), so the file records the decision:
each candidate's median (p20/p80 of its rounds) and, where the incumbent was kept within the noise, the incumbent
gets the band's best numbers and is listed first (`min` keeps the first of equal values). Every candidate's own
samples go to the manifest (Entry.selection), so nothing measured is lost.

`choose` is pure; `install` (build child only) wires it into Triton's Autotuner.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """mode "robust": the steps above; "triton": Triton's own single timing pass and min (what a server does)."""
    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["robust", "triton"] = "robust"
    top: int = Field(4, ge=2)                 # candidates timed again
    window: float = Field(0.10, ge=0)         # ... within this fraction of the screening's fastest
    rounds: int = Field(4, ge=1)              # extra timings per candidate
    noise: float = Field(0.02, ge=0, lt=1)    # a challenger must beat the incumbent by more than this
    screen_warmup_ms: float = Field(10.0, gt=0)
    screen_rep_ms: float = Field(25.0, gt=0)
    rep_ms: float = Field(25.0, gt=0)         # each extra timing


@dataclass(frozen=True)
class Candidate:
    order: int                    # position in the kernel's config list (the incumbent is the lowest)
    samples: tuple[float, ...]    # p50 of each timing, in ms (screening first)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def bulk(self) -> tuple[float, float]:
        """(p20, p80) of the samples."""
        _, p20, p80 = _spread(self.samples)
        return p20, p80


@dataclass(frozen=True)
class Decision:
    winner: int                   # index into the candidates given to choose()
    fastest: int                  # the candidate with the smallest median
    band: tuple[int, ...]         # candidates not slower than the fastest beyond noise
    medians: tuple[float, ...] = field(default=())

    @property
    def kept_incumbent(self) -> bool:
        return self.winner != self.fastest


def choose(candidates: list[Candidate], noise: float) -> Decision:
    """The incumbent (lowest `order`) among the candidates the fastest does not beat beyond noise: a median
    within `noise` of the fastest's, or a p20 at or below the fastest's p80 (their timings overlap)."""
    if not candidates:
        raise ValueError("no candidates")
    medians = tuple(c.median for c in candidates)
    fastest = min(range(len(candidates)), key=lambda i: (medians[i], candidates[i].order))
    limit, top = medians[fastest] * (1 + noise), candidates[fastest].bulk[1]
    band = tuple(i for i, c in enumerate(candidates) if medians[i] <= limit or c.bulk[0] <= top)
    winner = min(band, key=lambda i: candidates[i].order)
    return Decision(winner=winner, fastest=fastest, band=band, medians=medians)


def shortlist(timings: dict, settings: Settings) -> list:
    """The configs worth timing again: the fastest `top` of the screening within `window` of the best."""
    finite = sorted((c for c, t in timings.items() if _p50(t) != float("inf")), key=lambda c: _p50(timings[c]))
    if not finite:
        return []
    best = _p50(timings[finite[0]])
    return [c for c in finite[:settings.top] if _p50(timings[c]) <= best * (1 + settings.window)]


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


def refine(tuner, tuning_key: tuple, settings: Settings) -> None:
    """After Triton's (screening) benchmark of a miss: time the shortlist again and fix the winner."""
    from .triton_cache import innermost_jit

    timings = dict(tuner.configs_timings)
    kwargs = getattr(tuner, "_autotune_cache_run_kwargs", None)
    cands = shortlist(timings, settings)
    if kwargs is None or tuner.nargs is None or len(cands) < 2:
        return
    args = list(tuner.nargs.values())   # run()'s positional arguments, in order
    samples = {c: [_p50(timings[c])] for c in cands}
    for r in range(settings.rounds):
        for c in (cands if r % 2 == 0 else cands[::-1]):   # alternate the order: drift hits both ends alike
            samples[c].append(_p50(tuner._bench(*args, config=c, **kwargs)))
    candidates = [Candidate(order=_order(tuner.configs, c), samples=tuple(samples[c])) for c in cands]
    decision = choose(candidates, settings.noise)
    winner = cands[decision.winner]
    for c in cands:
        timings[c] = _spread(samples[c])
    if decision.kept_incumbent:   # the file must make Triton's min() land on the incumbent
        band = [timings[cands[i]] for i in decision.band]
        timings[winner] = [min(t[j] for t in band) for j in range(3)]
    tuner.configs_timings = {winner: timings[winner], **{c: t for c, t in timings.items() if c is not winner}}
    tuner.cache[tuning_key] = winner
    # Triton resets reset_to_zero arguments after its benchmark; the extra timings dirtied them again.
    tuner.pre_hook({**tuner.nargs, **kwargs, **winner.all_kwargs()}, reset_only=True)
    decisions[(innermost_jit(tuner.fn).__name__, tuple(tuning_key))] = {
        "noise": settings.noise, "kept_incumbent": decision.kept_incumbent,
        "candidates": [{"config": _config_dict(c),
                        "order": cand.order, "median": round(cand.median, 6),
                        "samples": [round(x, 6) for x in cand.samples]}
                       for c, cand in zip(cands, candidates)],
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


def install(settings: Settings) -> None:
    """In the build child: shorter screening timings for autotuners that bring no benchmarker of their own, and
    refine() after every benchmark of a disk-cache miss."""
    import functools
    import inspect

    import triton.runtime.autotuner as at
    from triton.runtime.driver import driver

    from . import triton_cache

    if settings.mode != "robust" or getattr(at.Autotuner.prune_configs, "_autotune_cache_selection", False):
        return
    original_prune = at.Autotuner.prune_configs

    def prune_configs(self, kwargs):
        # run()'s keyword arguments (grid, warmup, ...), needed to time a config again; the only hook that sees them
        self._autotune_cache_run_kwargs = kwargs
        if self._do_bench is None and "do_bench" not in self.__dict__:
            bench = driver.active.get_benchmarker()
            params = inspect.signature(bench).parameters
            if "rep" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
                self.__dict__["do_bench"] = functools.partial(bench, warmup=settings.screen_warmup_ms,
                                                              rep=settings.screen_rep_ms)
        return original_prune(self, kwargs)

    prune_configs._autotune_cache_selection = True
    at.Autotuner.prune_configs = prune_configs

    def after_bench(tuner, tuning_key):
        screen = tuner.__dict__.get("do_bench")
        if isinstance(screen, functools.partial):   # the extra timings are longer than the screening ones
            tuner.__dict__["do_bench"] = functools.partial(screen.func, warmup=settings.screen_warmup_ms,
                                                           rep=settings.rep_ms)
        try:
            refine(tuner, tuning_key, settings)
        finally:
            if isinstance(screen, functools.partial):
                tuner.__dict__["do_bench"] = screen

    triton_cache.add_bench_hook(after_bench)
