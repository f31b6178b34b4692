"""Winner stability: do N builds of the same spec pick the same winner for every (kernel, key)?

Either builds N times (default 3), each into a fresh dir, with
`python -m autotune_cache build --model M --tp ... --cache-dir <dir i> --no-progress --json` (needs a GPU), or, to
save GPU time, compares existing builds given with --dirs D1 D2 ... (no GPU needed unless --retime).

What is compared, per (kernel, key) found in any build (scan of each dir's autotune files; the manifest adds the
token count and shape that tuned it):
- same: the winner config (kwargs, num_warps, num_stages, num_ctas, maxnreg) is the same in every build;
- best spread: max/min - 1 of the winners' recorded `best` times (p50 in ms) across builds. Recorded times come from
  different runs, so for keys with the same winner this is the run-to-run noise (shown as the noise reference);
- in-run regret: within each build's own autotune file (all configs timed in one run), how much slower the other
  builds' winners were than its own winner: max over builds of t_i(winner_j) / t_i(winner_i) - 1. Free of the
  drift between runs;
- with --retime (GPU): the distinct winners of each differing key re-timed in ONE fresh process (the serving call
  at the token count that tuned the key, each winner launched alone with triton.testing.do_bench, --repeats times,
  interleaved; scripts/_kernel_timing.py): retimed spread = slowest median / fastest median - 1, and a verdict
  ("slower": every repeat of the slowest winner above every repeat of the fastest, else "noise").
Summary: fraction of keys (present in all builds) with the same winner in all builds (target >= 90%), and the max
spread among the rest (target <= 2%; the best spread, and the retimed spread when measured).

    python scripts/bench_stability.py --model qwen3.5-9b --tp 1 --builds 3 --json-out bench_stability.json
    python scripts/bench_stability.py --dirs ./b1 ./b2 ./b3 [--retime] --json-out bench_stability.json

Exit codes: 0 compared (whatever the result), 1 a build or the retiming failed, 2 bad input or no CUDA GPU where one
is needed. --emulate builds/retimes on a fake sm_90 GPU to smoke-test the script: its times are fake.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _kernel_timing as kt

SAME_TARGET = 0.90
SPREAD_TARGET = 0.02


def load_build(label: str, cache_dir) -> dict:
    """One build dir as plain data: per key id its winner, recorded best, every config's p50 (from the autotune
    file) and, from the manifest, the token count and the call (target, shape, dtypes) that tuned it."""
    from autotune_cache.cache.layout import read_autotune
    from autotune_cache.cache.scan import scan
    s = scan(cache_dir)
    m = s.manifest
    build = {"label": label, "dir": str(s.root), "emulated": bool(m and m.fingerprint and m.fingerprint.emulated),
             "gpu": m.fingerprint.gpu_name if m and m.fingerprint else None, "entries": {},
             "warnings": [f"{w.path}: {w.message}" for w in s.warnings]}
    for r in s.autotune:
        kid = kt.key_id(r.kernel, r.key)
        if kid in build["entries"]:
            build["warnings"].append(f"{r.kernel} {r.key}: two autotune files (other disk keys); the first is used")
            continue
        timings = [[kt.config_dict(cfg), t[0]] for cfg, t in read_autotune(s.root / r.file).timings]
        entry = m.entries.get(r.file) if m else None
        call = None
        if entry is not None and entry.units and entry.tokens and entry.units[0] in m.units:
            unit = m.units[entry.units[0]]
            call = {"target": unit.target, "shape": unit.shape, "dtypes": unit.dtypes, "tokens": entry.tokens}
        build["entries"][kid] = {"kernel": r.kernel, "key": list(r.key), "winner": kt.config_dict(r.winner),
                                 "best": r.best, "timings": timings, "call": call}
    return build


def _cid(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def compare(builds: list[dict]) -> dict:
    """Rows per (kernel, key) and the summary. Pure: takes load_build() results."""
    labels = [b["label"] for b in builds]
    kids = sorted({k for b in builds for k in b["entries"]})
    rows = []
    for kid in kids:
        present = {b["label"]: b["entries"][kid] for b in builds if kid in b["entries"]}
        first = next(iter(present.values()))
        winners = {label: _cid(e["winner"]) for label, e in present.items()}
        bests = {label: e["best"] for label, e in present.items()}
        distinct = sorted(set(winners.values()))
        regret = 0.0
        for label, e in present.items():
            own = {_cid(c): t for c, t in e["timings"]}
            mine = own.get(winners[label])
            for w in distinct:
                if mine and w in own:
                    regret = max(regret, own[w] / mine - 1)
        lo = min(bests.values())
        rows.append({"kernel": first["kernel"], "key": first["key"], "key_text": kt.key_text(first["key"]),
                     "missing": [label for label in labels if label not in present],
                     "same": len(distinct) == 1 if len(present) == len(labels) else None,
                     "distinct_winners": len(distinct),
                     "winners": {label: kt.config_text(e["winner"]) for label, e in present.items()},
                     "best_ms": bests, "best_spread": max(bests.values()) / lo - 1 if lo > 0 else None,
                     "in_run_regret": regret, "call": next((e["call"] for e in present.values() if e["call"]), None)})
    return {"labels": labels, "rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    compared = [r for r in rows if r["same"] is not None]
    same = [r for r in compared if r["same"]]
    differ = [r for r in compared if not r["same"]]

    def biggest(field, among):
        values = [r[field] for r in among if r.get(field) is not None]
        return max(values) if values else None
    retimed = [r["retimed"]["spread"] for r in differ if r.get("retimed") and r["retimed"].get("spread") is not None]
    fraction = len(same) / len(compared) if compared else None
    spread = biggest("best_spread", differ)
    noise = sorted(r["best_spread"] for r in same if r["best_spread"] is not None)
    return {"keys": len(rows), "compared": len(compared), "incomplete": len(rows) - len(compared),
            "same": len(same), "differ": len(differ), "fraction_same": fraction,
            "same_target": SAME_TARGET, "same_target_met": None if fraction is None else fraction >= SAME_TARGET,
            "max_best_spread_differing": spread, "max_in_run_regret_differing": biggest("in_run_regret", differ),
            "max_retimed_spread_differing": max(retimed) if retimed else None,
            "spread_target": SPREAD_TARGET,
            "spread_target_met": (True if not differ else
                                  (max(retimed) if retimed else spread) <= SPREAD_TARGET
                                  if (retimed or spread is not None) else None),
            "noise_reference_best_spread_same_winner": {"median": noise[len(noise) // 2], "max": noise[-1]}
            if noise else None}


def retime(report: dict, builds: list[dict], args) -> None:
    """Re-time the distinct winners of every differing key in one fresh process; adds row['retimed']."""
    differ = [r for r in report["rows"] if r["same"] is False]
    calls: dict[str, dict] = {}
    for r in differ:
        if r["call"] is None:
            r["retimed"] = {"error": "no manifest entry tells which call tuned this key: not re-timed"}
            continue
        c = r["call"]
        group = calls.setdefault(json.dumps(c, sort_keys=True), {**c, "only": [],
                                                                 "caches": [{"label": b["label"], "dir": b["dir"]}
                                                                            for b in builds],
                                                                 "distinct_only": True})
        group["only"].append(kt.key_id(r["kernel"], r["key"]))
    if not calls:
        return
    spec = {"emulate": args.emulate, "scratch_dir": tempfile.mkdtemp(prefix="bench-stability-scratch-"),
            "repeats": args.repeats, "warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms, "cudagraph": False,
            "calls": list(calls.values())}
    try:
        result = kt.run_worker(spec, args.timeout)
    finally:
        shutil.rmtree(spec["scratch_dir"], ignore_errors=True)
    report["retime_device"] = result["device"]
    by_kid = {launch["key_id"]: launch for call in result["calls"] for launch in call["launches"]}
    for r in differ:
        if "retimed" in r:
            continue
        launch = by_kid.get(kt.key_id(r["kernel"], r["key"]))
        if launch is None:
            r["retimed"] = {"error": "the serving call did not reach this key"}
            continue
        r["retimed"] = retimed_row(launch)
    report["summary"] = summarize(report["rows"])


def retimed_row(launch: dict) -> dict:
    """Per distinct config: its labels and timing stats; spread and verdict slowest vs fastest. Pure."""
    by_config: dict[str, dict] = {}
    for label, c in launch["configs"].items():
        entry = by_config.setdefault(_cid(c["config"]), {"config": c["text"], "labels": [],
                                                          "times_ms": launch["times_ms"].get(label)})
        entry["labels"].append(label)
    timed = [e for e in by_config.values() if e["times_ms"]]
    for e in timed:
        e["ms"] = kt.stats(e["times_ms"])
    out = {"by_config": list(by_config.values()), "errors": launch.get("errors", {})}
    if len(timed) >= 2:
        fast = min(timed, key=lambda e: e["ms"]["median"])
        slow = max(timed, key=lambda e: e["ms"]["median"])
        out["spread"] = slow["ms"]["median"] / fast["ms"]["median"] - 1
        out["verdict"] = kt.noise_verdict(slow["times_ms"], fast["times_ms"])
    return out


def build_all(args) -> list[Path]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-stability-"))
    dirs = [work / f"build-{i + 1}" for i in range(args.builds)]
    for d in dirs:
        if d.exists() and any(d.iterdir()):
            print(f"error: {d} is not empty: a build there would only fill what is missing", file=sys.stderr)
            sys.exit(2)
    for i, d in enumerate(dirs):
        cmd = [sys.executable, "-m", "autotune_cache", "build", "--tp", args.tp, "--target", args.target,
               "--cache-dir", str(d), "--no-progress", "--json"]
        cmd += ["--config", args.config] if args.config else ["--model", args.model or "qwen3.5-9b"]
        cmd += ["--max-tokens", str(args.max_tokens)] if args.max_tokens else []
        cmd += ["--emulate"] if args.emulate else []
        print(f"build {i + 1}/{len(dirs)}: {' '.join(cmd[1:])}", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=kt.subprocess_env())
        if proc.returncode != 0:
            print(f"error: build {i + 1} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            sys.exit(1)
    return dirs


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def print_report(report: dict) -> None:
    if report["emulated"]:
        print(kt.EMULATED_NOTE)
    labels = report["labels"]
    print(f"{len(labels)} builds: " + ", ".join(f"{b['label']}={b['dir']}" for b in report["builds"]))
    print(f"{'kernel':47s} {'key':34s} {'same':5s} {'best spread':>11s} {'in-run regret':>13s} {'retimed':>8s}")
    for r in report["rows"]:
        same = "-" if r["same"] is None else "yes" if r["same"] else "NO"
        rt = r.get("retimed") or {}
        retimed = _pct(rt.get("spread")) + ("!" if rt.get("verdict") == "slower" else "") if rt else ""
        print(f"{r['kernel'][:47]:47s} {r['key_text'][:34]:34s} {same:5s} {_pct(r['best_spread']):>11s} "
              f"{_pct(r['in_run_regret']):>13s} {retimed:>8s}")
        if r["same"] is False or r["missing"]:
            for label, w in r["winners"].items():
                print(f"    {label}: {w} ({r['best_ms'][label]:.4g} ms)")
            if r["missing"]:
                print(f"    missing in: {', '.join(r['missing'])}")
            if rt.get("error"):
                print(f"    retime: {rt['error']}")
    s = report["summary"]
    frac = "-" if s["fraction_same"] is None else f"{s['fraction_same'] * 100:.0f}%"
    met = "met" if s["same_target_met"] else "MISSED" if s["same_target_met"] is False else "-"
    print(f"same winner in all builds: {s['same']} of {s['compared']} keys ({frac}; target >= "
          f"{SAME_TARGET * 100:.0f}%: {met})"
          + (f"; {s['incomplete']} keys not in every build" if s["incomplete"] else ""))
    print(f"among the {s['differ']} others: max best spread {_pct(s['max_best_spread_differing'])}, max in-run regret "
          f"{_pct(s['max_in_run_regret_differing'])}, max retimed spread {_pct(s['max_retimed_spread_differing'])} "
          f"(target <= {SPREAD_TARGET * 100:.0f}%: "
          f"{'met' if s['spread_target_met'] else 'MISSED' if s['spread_target_met'] is False else '-'})")
    if s["noise_reference_best_spread_same_winner"]:
        n = s["noise_reference_best_spread_same_winner"]
        print(f"noise reference (same winner, recorded best across builds): median {_pct(n['median'])}, "
              f"max {_pct(n['max'])}")
    if report["emulated"]:
        print(kt.EMULATED_NOTE)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dirs", nargs="+", help="existing builds to compare (no build is run)")
    ap.add_argument("--builds", type=int, default=3, help="builds to run when --dirs is not given (default 3)")
    ap.add_argument("--work-dir", help="where the builds go (default: a new temp dir); build-1, build-2, ...")
    ap.add_argument("--model", default=None, help="preset (default qwen3.5-9b)")
    ap.add_argument("--config", default=None, help="HF config.json or snapshot dir, instead of --model")
    ap.add_argument("--tp", default="1", help="TP degrees for the builds, comma-separated")
    ap.add_argument("--target", default="fla")
    ap.add_argument("--max-tokens", type=int, default=None, help="the builds' --max-tokens (default: build's)")
    ap.add_argument("--retime", action="store_true", help="re-time differing winners in one fresh process (GPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup-ms", type=int, default=25)
    ap.add_argument("--rep-ms", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds for the retiming process")
    ap.add_argument("--emulate", action="store_true", help="fake sm_90 GPU: smoke test, times are fake")
    ap.add_argument("--json-out", default="bench_stability.json")
    args = ap.parse_args(argv)

    if args.dirs:
        if len(args.dirs) < 2:
            ap.error("--dirs needs at least two builds")
        for d in args.dirs:
            if not Path(d).is_dir():
                print(f"error: {d} is not a directory", file=sys.stderr)
                return 2
        if args.retime:
            kt.require_gpu(args.emulate, "bench_stability --retime")
        dirs = [Path(d) for d in args.dirs]
    else:
        if args.builds < 2:
            ap.error("--builds must be at least 2")
        kt.require_gpu(args.emulate, "bench_stability (building)")
        dirs = build_all(args)

    labels = [f"build{i + 1}" for i in range(len(dirs))]
    builds = [load_build(label, d) for label, d in zip(labels, dirs, strict=True)]
    report = compare(builds)
    report["builds"] = [{"label": b["label"], "dir": b["dir"], "gpu": b["gpu"], "emulated": b["emulated"],
                         "warnings": b["warnings"]} for b in builds]
    report["emulated"] = args.emulate or any(b["emulated"] for b in builds)
    if report["emulated"]:
        report["note"] = kt.EMULATED_NOTE
    if args.retime:
        try:
            retime(report, builds, args)
        except RuntimeError as e:
            print(f"error: retime: {e}", file=sys.stderr)
            return 1
    Path(args.json_out).write_text(json.dumps(report, indent=1))
    print_report(report)
    print(f"JSON: {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
