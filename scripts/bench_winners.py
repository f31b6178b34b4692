"""Winner quality: GPU time of each autotuned kernel with the winners of cache A ("ours") vs cache B ("baseline").

What is measured: for each token count T (--tokens, default 512,4096,16384), one FRESH process makes the target's
serving call once (upstream FLA's chunk_gated_delta_rule forward, the tensors `autotune_cache.targets.fla.run`
makes: varlen, bf16 q/k/v, fp32 g, initial state in the model's state dtype) and captures every launch of an
autotuned kernel (a hook on Autotuner.run). For each launch it resolves, per cache dir, the winner Triton would read
for that kernel's key from that dir (Triton's own disk lookup, read-only: see scripts/_kernel_timing.py), then
re-launches the kernel alone with each cache's winner and times it with triton.testing.do_bench (median of its
runs, L2 flushed before each run; --cudagraph: do_bench_cudagraph), --repeats times, A and B interleaved and their
order alternated every repeat. Same process, same tensors, same GPU state for both caches.

- A key missing from a cache (e.g. l2norm's NB=4 key at T=16384 in a cache tuned at T=64) is tuned in that process
  with Triton's own benchmark, as a server with that cache would do, and marked "*" (source "tuned in-process");
  it is never silently mixed with cache winners.
- "winners": same / DIFFER (kwargs, num_warps, num_stages, num_ctas and maxnreg compared: a config that differs
  only in warps or stages is another kernel). With the same winner both columns time the same kernel: their
  ratio shows the noise.
- "verdict" (noise rule): "slower" when every repeat of ours took longer than every repeat of the baseline
  (min(ours) > max(baseline)), "faster" for the reverse, else "noise".
- "whole call": the sum over the captured launches (launch count x time) per repeat; the autotuned kernels only
  (the call's other kernels are the same for both caches).
Nothing is written into either cache dir; compiled kernels go to a scratch dir.

Typical use on a GPU host (two builds, then this; about a minute per T):

    autotune-cache build --model qwen3.5-9b --tp 1 --cache-dir ./ours --no-progress
    autotune-cache build --model qwen3.5-9b --tp 1 --max-tokens 64 --cache-dir ./t64 --no-progress
    python scripts/bench_winners.py --ours ./ours --baseline ./t64 --baseline-label tuned@T64 \
        --model qwen3.5-9b --tp 1 --json-out bench_winners.json

--baseline first-config: no second dir; the baseline is each kernel's first config that compiles and launches,
what VLLM_TRITON_FORCE_FIRST_CONFIG picks (vLLM's own force_first_config where vLLM imports, else the same rule;
the JSON says which). With --target vllm or sglang it measures the engines' own kernels and config lists:

    python scripts/bench_winners.py --ours ./ours --baseline first-config --model qwen3.5-9b --target vllm

Exit codes: 0 measured (whatever the verdicts), 1 a timing process failed, 2 bad input or no CUDA GPU.
--emulate runs on a fake sm_90 GPU (no GPU needed) to smoke-test the script: its times are fake.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _kernel_timing as kt


def summarize_call(call: dict, ours: str, base: str) -> dict:
    """Rows per kernel launch and the whole call for one token count, from the worker's result. Pure."""
    rows, whole = [], {ours: None, base: None}
    for launch in call["launches"]:
        t_o, t_b = launch["times_ms"].get(ours), launch["times_ms"].get(base)
        row = {"kernel": launch["kernel"], "key": launch["key"], "count": launch["count"],
               "configs": {label: launch["configs"][label]["text"] for label in (ours, base)},
               "differ": launch["configs"][ours]["config"] != launch["configs"][base]["config"],
               "sources": {label: launch["sources"][label] for label in (ours, base)},
               "errors": launch.get("errors", {})}
        if t_o and t_b:
            s_o, s_b = kt.stats(t_o), kt.stats(t_b)
            row.update({"ours_ms": s_o, "baseline_ms": s_b, "ratio": s_o["median"] / s_b["median"],
                        "verdict": kt.noise_verdict(t_o, t_b), "times_ms": {ours: t_o, base: t_b}})
            for label, times in ((ours, t_o), (base, t_b)):
                scaled = [launch["count"] * t for t in times]
                whole[label] = (scaled if whole[label] is None
                                else [a + b for a, b in zip(whole[label], scaled, strict=True)])
        else:
            row.update({"ours_ms": None, "baseline_ms": None, "ratio": None, "verdict": "n/a"})
        rows.append(row)
    complete = all(r["ratio"] is not None for r in rows) and rows
    whole_row = None
    if complete:
        s_o, s_b = kt.stats(whole[ours]), kt.stats(whole[base])
        whole_row = {"ours_ms": s_o, "baseline_ms": s_b, "ratio": s_o["median"] / s_b["median"],
                     "verdict": kt.noise_verdict(whole[ours], whole[base]), "times_ms": whole}
    in_process = [f"{r['kernel']} {kt.key_text(r['key'])} ({label})" for r in rows
                  for label, src in r["sources"].items() if src == "tuned in-process"]
    return {"tokens": call["tokens"], "kernels": rows, "whole_call": whole_row, "in_process": in_process}


def summary(results: list[dict]) -> dict:
    rows = [r for res in results for r in res["kernels"] if r["ratio"] is not None]
    count = {v: sum(r["verdict"] == v for r in rows) for v in ("slower", "faster", "noise")}
    return {"rows": len(rows), "differ": sum(r["differ"] for r in rows),
            "slower_beyond_noise": [f"T={res['tokens']} {r['kernel']}" for res in results for r in res["kernels"]
                                    if r["verdict"] == "slower"],
            "faster_beyond_noise": [f"T={res['tokens']} {r['kernel']}" for res in results for r in res["kernels"]
                                    if r["verdict"] == "faster"],
            # both sides timed the same kernel here: a flag is the noise rule failing
            "same_config_flagged": sum(not r["differ"] and r["verdict"] in ("slower", "faster") for r in rows),
            "verdicts": count,
            "whole_call": {res["tokens"]: res["whole_call"] and {"ratio": res["whole_call"]["ratio"],
                                                                  "verdict": res["whole_call"]["verdict"]}
                           for res in results}}


def _ms(s: dict | None) -> str:
    if not s:
        return "-"
    spread = (s["max"] - s["min"]) / s["median"] * 100 if s["median"] else 0.0
    return f"{s['median']:.4f} ±{spread:.0f}%"


def print_report(report: dict) -> None:
    ours, base = report["labels"]
    if report["emulated"]:
        print(kt.EMULATED_NOTE)
    print(f"{report['model']} TP {report['tp']}, target {report['target']}, device {report['device']}, "
          f"{report['repeats']} repeats (median of do_bench medians; ±: max-min over median)")
    if report.get("first_config_rule"):
        print(f"{base}: each kernel's first valid config, by {report['first_config_rule']}")
    head = (f"{'T':>6s}  {'kernel':47s} {'n':>2s} {ours[:14]:>14s} {base[:14]:>14s} {'ratio':>6s}  "
            f"{'winners':7s} verdict")
    print(head)
    for res in report["results"]:
        for r in res["kernels"]:
            mark = "*" if "tuned in-process" in r["sources"].values() else " "
            ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
            print(f"{res['tokens']:6d}  {r['kernel'][:46]:46s}{mark} {r['count']:2d} {_ms(r['ours_ms']):>14s} "
                  f"{_ms(r['baseline_ms']):>14s} {ratio:>6s}  {'DIFFER' if r['differ'] else 'same':7s} "
                  f"{r['verdict']}")
        w = res["whole_call"]
        if w:
            print(f"{res['tokens']:6d}  {'whole call (sum of autotuned launches)':46s}     {_ms(w['ours_ms']):>14s} "
                  f"{_ms(w['baseline_ms']):>14s} {w['ratio']:6.3f}  {'':7s} {w['verdict']}")
    print("winner configs that differ:")
    for res in report["results"]:
        for r in res["kernels"]:
            if r["differ"]:
                print(f"  T={res['tokens']} {r['kernel']} {kt.key_text(r['key'])}: {ours}: {r['configs'][ours]}; "
                      f"{base}: {r['configs'][base]}")
            for label, err in r["errors"].items():
                print(f"  T={res['tokens']} {r['kernel']}: {label}'s config failed: {err}")
    notes = [k for res in report["results"] for k in (f"T={res['tokens']} {x}" for x in res["in_process"])]
    if notes:
        print("* tuned in-process, not from the cache (the key is not in that cache; a server would tune it too):")
        for n in notes:
            print(f"  {n}")
    s = report["summary"]
    print(f"summary: {s['rows']} kernel rows, {s['differ']} with other winners; beyond noise: "
          f"{len(s['slower_beyond_noise'])} slower, {len(s['faster_beyond_noise'])} faster "
          f"(same-config rows flagged: {s['same_config_flagged']}, expected 0)")
    for t, w in s["whole_call"].items():
        if w:
            print(f"  whole call T={t}: {ours}/{base} = {w['ratio']:.3f} ({w['verdict']})")
    if report["emulated"]:
        print(kt.EMULATED_NOTE)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", required=True, help="cache dir A (e.g. built with default token counts)")
    ap.add_argument("--baseline", required=True, help="cache dir B (e.g. built with --max-tokens 64), or "
                    f"'{kt.FIRST_CONFIG}': each kernel's first valid config (VLLM_TRITON_FORCE_FIRST_CONFIG)")
    ap.add_argument("--ours-label", default="ours")
    ap.add_argument("--baseline-label", default=None, help="default: baseline (first-config for that mode)")
    ap.add_argument("--model", default=None, help="preset (default qwen3.5-9b)")
    ap.add_argument("--config", default=None, help="HF config.json or snapshot dir, instead of --model")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--target", default="fla", help="kernel source whose serving call is made (default fla)")
    ap.add_argument("--tokens", default="512,4096,16384", help="token counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=5, help="timings per kernel and cache, interleaved (default 5)")
    ap.add_argument("--warmup-ms", type=int, default=25, help="do_bench warmup (ms)")
    ap.add_argument("--rep-ms", type=int, default=100, help="do_bench measuring time per timing (ms)")
    ap.add_argument("--cudagraph", action="store_true", help="time with do_bench_cudagraph (no L2 flush)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per token count's process")
    ap.add_argument("--emulate", action="store_true", help="fake sm_90 GPU: smoke test, times are fake")
    ap.add_argument("--json-out", default="bench_winners.json")
    args = ap.parse_args(argv)

    first = args.baseline == kt.FIRST_CONFIG
    labels = (args.ours_label, args.baseline_label or (kt.FIRST_CONFIG if first else "baseline"))
    if labels[0] == labels[1]:
        ap.error("--ours-label and --baseline-label must differ")
    for d in (args.ours,) if first else (args.ours, args.baseline):
        if not Path(d).is_dir():
            print(f"error: cache dir {d} does not exist", file=sys.stderr)
            return 2
    try:
        tokens = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        ap.error(f"--tokens: not a list of integers: {args.tokens}")
    if args.repeats < 1 or any(t < 1 for t in tokens):
        ap.error("--repeats and --tokens must be positive")
    kt.require_gpu(args.emulate, "bench_winners")

    from autotune_cache import shapes
    from autotune_cache.errors import AutotuneCacheError
    from autotune_cache.targets import get
    try:
        target = get(args.target)
        shape = shapes.resolve(args.model, args.config).per_rank(args.tp)
    except AutotuneCacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dtypes = target.default_dtypes(shape)
    caches = [{"label": labels[0], "dir": str(Path(args.ours).resolve())},
              {"label": labels[1], "first_config": True} if first else
              {"label": labels[1], "dir": str(Path(args.baseline).resolve())}]
    scratch = tempfile.mkdtemp(prefix="bench-winners-scratch-")   # compiled kernels, shared by the T processes
    report = {"model": args.model or shapes.DEFAULT_MODEL, "config": args.config, "tp": args.tp,
              "target": args.target, "shape": shape.model_dump(), "dtypes": dtypes, "tokens": tokens,
              "repeats": args.repeats, "labels": list(labels),
              "caches": {c["label"]: c.get("dir", kt.FIRST_CONFIG) for c in caches},
              "timer": "do_bench_cudagraph" if args.cudagraph else f"do_bench(warmup={args.warmup_ms}, "
                                                                   f"rep={args.rep_ms})",
              "emulated": args.emulate, "results": []}
    if args.emulate:
        report["note"] = kt.EMULATED_NOTE
    try:
        code = _measure(report, tokens, caches, shape, dtypes, scratch, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if code:
        return code
    report["summary"] = summary(report["results"])
    Path(args.json_out).write_text(json.dumps(report, indent=1))
    print_report(report)
    print(f"JSON: {args.json_out}")
    return 0


def _measure(report, tokens, caches, shape, dtypes, scratch, args) -> int:
    """One fresh timing process per token count; results appended to report. 1 when one failed."""
    for t in tokens:
        spec = {"emulate": args.emulate, "scratch_dir": scratch, "repeats": args.repeats, "warmup_ms": args.warmup_ms,
                "rep_ms": args.rep_ms, "cudagraph": args.cudagraph,
                "calls": [{"target": args.target, "shape": shape.model_dump(), "dtypes": dtypes, "tokens": t,
                           "caches": caches}]}
        print(f"T={t}: timing in a fresh process ...", file=sys.stderr)
        try:
            result = kt.run_worker(spec, args.timeout)
        except RuntimeError as e:
            print(f"error: T={t}: {e}", file=sys.stderr)
            return 1
        report.update(device=result["device"], triton=result["triton"], torch=result["torch"])
        if result["calls"][0].get("first_config_rule"):
            report["first_config_rule"] = result["calls"][0]["first_config_rule"]
        report["results"].append(summarize_call(result["calls"][0], *report["labels"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
