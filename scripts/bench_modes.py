"""This project's cache against what a vLLM operator has instead, side by side, for one target's GDN kernels.

Modes (each served in a FRESH process with its own empty TRITON_CACHE_DIR, so cold state is honest):
  ours          install(CACHE_DIR) (--plugin: the vLLM plugin's register(), as vLLM loads it), then the traffic
  first-config  VLLM_TRITON_FORCE_FIRST_CONFIG: vLLM's own force_first_config (or the same rule where vLLM does not
                import): each kernel's first config that compiles and launches, nothing tuned
  warmup        in-process warmup as vLLM #36599 does (T = 16, 32, 64), then the traffic (what it meets, it tunes)
  cold          no warmup: each key tuned in the process when the traffic first meets it
ours and first-config make vLLM's own profile_run call first (T = 64), as a vLLM worker does before serving.
The traffic: varlen batches (several sequences per call, as the engine's layer calls its kernels) of 1 to
--traffic-max tokens, the same for every mode. Per mode: seconds spent benchmarking (autotune) and compiling
(Triton's compilation listener, ptxas runs included) in the serving process, split warmup / traffic, and the keys
tuned after warmup. With --jit-monitor, vLLM's own jit_monitor (vllm/utils/jit_monitor.py) is activated after the
warmup, as vLLM's worker does at the end of compile_or_warm_up_model, and what it reports during the traffic is
counted (autotune prints and first-time jit compiles). Triton calls the hook vLLM uses after every first launch of
a kernel variant in the process, also when the binary is loaded from the disk cache, not compiled: those are
counted apart ("loads"); in --jit-monitor-mode=error vLLM would raise on them too.

Kernel time per launch, per kernel and T in --tokens (default 512,2048,4096,16384), in ONE timing process per T
(scripts/_kernel_timing.py: the target's serving call captured, each launch re-timed alone with each mode's config,
do_bench medians, --repeats times, the modes interleaved): ours (the cache's winner), first-config, warmup (the
config the warmup process ended up using for that key), cold@T (the key tuned at this T in the timing process:
a cold in-process autotune at each size). Ratios are to ours.

    python scripts/bench_modes.py --cache-dir CACHE --target vllm --model qwen3.5-9b --tp 1 --json-out modes.json

Internal: `bench_modes.py serve SPEC.json OUT.json` is one serving process (tests/gpu/test_engines.py uses it too).
Exit codes: 0 measured, 1 a process failed, 2 bad input or no CUDA GPU. --emulate: fake sm_90 GPU, times are fake.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _kernel_timing as kt

MODES = ("ours", "first-config", "warmup", "cold")
# The calls each mode makes before vLLM's jit_monitor is activated: vLLM's profile_run drives every GDN layer at
# T=64 (FACTS §3); the warmup mode adds #36599's 16 and 32; cold has none (every key meets the traffic cold).
WARMUPS = {"ours": [64], "first-config": [64], "warmup": [16, 32, 64], "cold": []}
TIMED_TOKENS = "512,2048,4096,16384"


def traffic(max_tokens: int, seed: int = 0) -> list[list[int]]:
    """Varlen batches: [lens of the sequences of one call, ...], totals from 1 to max_tokens, up to 8 sequences a
    call; the same for every mode (seeded). Pure."""
    rng = random.Random(seed)
    totals, t = [], 1
    while t < max_tokens:
        totals.append(t)
        t = t * 2 + rng.randrange(0, t + 1)
    totals.append(max_tokens)
    batches = []
    for total in totals:
        n = min(total, rng.randint(1, 8))
        cuts = sorted(rng.sample(range(1, total), n - 1)) if n > 1 else []
        batches.append([b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)])
    return batches


# -- one serving process ------------------------------------------------------------------------------------------
class Events:
    """What one phase of a serving process spent on autotuning and compiling."""

    def __init__(self):
        self.tuned: dict[str, int] = {}    # key_id -> configs benchmarked
        self.tune_s = 0.0                  # wall time of the kernel calls that benchmarked (compiles in them too)
        self.compiles = 0                  # kernels compiled (not loaded from a cache)
        self.compile_s = 0.0
        self.compiled: list[str] = []     # their names
        self.jit_monitor: list[str] = []   # what vLLM's jit_monitor reported
        self.jit_monitor_loads = 0         # ... of which a kernel loaded from the disk cache, not compiled
        self.autotune_prints = 0           # Triton's "Triton autotuning for function" lines (knobs.autotuning.print)

    def as_dict(self) -> dict:
        return {"keys_tuned": sorted(self.tuned), "configs_benchmarked": sum(self.tuned.values()),
                "tune_s": round(self.tune_s, 3), "compiles": self.compiles, "compile_s": round(self.compile_s, 3),
                "compiled": sorted(set(self.compiled)),
                "jit_monitor_events": len(self.jit_monitor), "jit_monitor_loads": self.jit_monitor_loads,
                "jit_monitor": self.jit_monitor[:20],
                "autotune_prints": self.autotune_prints}


def _count(state: dict) -> None:
    """Hooks on Triton's autotuner (every benchmark, Autotuner._bench, charged to the key being run) and every
    compile (compiles.listen, Triton's compilation listener)."""
    from autotune_cache.autotuner import compiles, hooks
    from autotune_cache.autotuner.kernels import innermost_jit
    from autotune_cache.autotuner.keys import tuning_key
    stack: list[list] = []

    def counted_run(run, self, *args, **kwargs):   # run(self, ...): the later phases' hooks, then Triton's run
        if len(self.configs) <= 1:
            return run(self, *args, **kwargs)
        kid = kt.key_id(innermost_jit(self.fn).__name__, tuning_key(self, args, kwargs))
        stack.append([kid, 0])
        start = time.perf_counter()
        try:
            return run(self, *args, **kwargs)
        finally:
            _, benched = stack.pop()
            events = state["phase"]
            if benched:
                events.tuned[kid] = events.tuned.get(kid, 0) + benched
                events.tune_s += time.perf_counter() - start
            if getattr(self, "best_config", None) is not None:
                state["configs"][kid] = {k: v for k, v in vars(self.best_config).items() if k != "pre_hook"}

    def counted_bench(bench, self, *args, **kwargs):
        if stack:
            stack[-1][1] += 1
        return bench(self, *args, **kwargs)

    def compiled(event: compiles.Compile) -> None:
        state["last_cache_hit"] = event.cache_hit
        if not event.cache_hit:
            state["phase"].compiles += 1
            state["phase"].compiled.append(event.name)
            state["phase"].compile_s += event.seconds

    # "listen": counters, calling on. Under the loader's hooks (none on run or _bench) and the fake GPU's (_bench),
    # above the first-config mode's "replacement" of run: they see every call and the config it launched.
    hooks.add("listen", "run", counted_run)
    hooks.add("listen", "_bench", counted_bench)
    compiles.listen(compiled)


def _jit_monitor(state: dict) -> str:
    """vLLM's jit_monitor activated as vLLM's worker does after warmup (mode warn); its reports are counted."""
    from vllm.utils import jit_monitor

    def handle(*, backend, event, fn_name, detail=None):
        # Triton calls the hook after every in-memory JIT miss, also when the binary was loaded from the disk
        # cache (no compile): the compilation listener, called just before, tells which
        loaded = event == "kernel JIT compilation" and state.pop("last_cache_hit", False)
        state["phase"].jit_monitor.append(f"{backend} {event}{' (loaded from the cache)' if loaded else ''}: "
                                          f"{fn_name}")
        state["phase"].jit_monitor_loads += loaded
    jit_monitor._handle_jit_event = handle
    jit_monitor.activate(mode="warn")
    return jit_monitor.__file__


def serve_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec["emulate"]:
        from autotune_cache.builder import emulation
        emulation.fake_gpu()
    os.environ["TRITON_CACHE_DIR"] = spec["triton_dir"]   # empty: compiles and tuning are this process's own
    os.environ["TRITON_CACHE_AUTOTUNING"] = "1"            # what `import vllm` (>= 0.19) sets
    mode, result, loader = spec["mode"], {"mode": spec["mode"]}, None
    state = {"phase": Events(), "configs": {}}
    phases = {"warmup": state["phase"]}
    from autotune_cache.targets import get, registered
    target = get(spec["target"])
    # a target that is no registered one (tests' toy) has its kernels in its own modules: served as install(modules=)
    extra = target.module_prefixes if target not in registered() else ()
    start = time.perf_counter()
    if mode in ("ours", "plugin"):
        os.environ.pop("TRITON_CACHE_AUTOTUNING")   # the loader switches the target kernels alone
        if mode == "plugin":
            os.environ["AUTOTUNE_CACHE_DIR"] = spec["cache_dir"]
            from autotune_cache.integrations.vllm_plugin import register
            register()
            from autotune_cache.serve.loader import report
            loader = report()
            if loader is not None:
                loader.prefixes += extra
        else:
            from autotune_cache.serve.loader import install
            loader = install(spec["cache_dir"], modules=extra)
    elif mode == "first-config":
        os.environ["VLLM_TRITON_FORCE_FIRST_CONFIG"] = "1"
        from autotune_cache.autotuner import hooks
        first_valid, result["first_config_rule"] = kt.first_config_rule()

        def first_config(run, tuner, *args, **kwargs):   # never calls on: the rule in place of Triton's run
            return first_valid(tuner, *args, **kwargs)

        # "replacement": last, so _count's hooks ("listen") run around it, as they would around Triton's run
        hooks.add("replacement", "run", first_config)
    result["install_s"] = round(time.perf_counter() - start, 3)
    _count(state)
    import importlib

    import torch

    from autotune_cache.shapes import RankShape
    for module in target.imports:
        importlib.import_module(module)
    module = importlib.import_module(target.runner.rpartition(".")[0])
    shape, dtypes, device = RankShape(**spec["shape"]), spec["dtypes"], "cpu" if spec["emulate"] else "cuda"

    def call(lens):
        if hasattr(module, "serve"):
            module.serve(shape, dtypes, lens, device)
        else:   # upstream FLA: one sequence
            target.run(shape, dtypes, sum(lens), device)
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    for t in spec["warmup"]:
        call([t])
    result["warmup_s"] = round(time.perf_counter() - start, 3)
    state["phase"] = phases["traffic"] = Events()
    if spec["jit_monitor"]:
        result["jit_monitor"] = _jit_monitor(state)
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        for lens in spec["traffic"]:
            call(lens)
    result["traffic_s"] = round(time.perf_counter() - start, 3)
    phases["traffic"].autotune_prints = printed.getvalue().count("Triton autotuning for function")
    if mode in ("ours", "plugin"):   # its counters: what the target kernels looked up, after the traffic
        result["loader"] = loader.as_dict() if loader else None
    result.update(phases={name: e.as_dict() for name, e in phases.items()}, configs=state["configs"],
                  calls=len(spec["traffic"]), max_tokens=max(sum(b) for b in spec["traffic"]))
    Path(out_path).write_text(json.dumps(result))
    return 0


def run_serve(spec: dict, timeout: float) -> dict:
    """One serving process on `spec` (a fresh TRITON_CACHE_DIR each); its result, or RuntimeError with its stderr."""
    with tempfile.TemporaryDirectory(prefix="bench-modes-") as tmp:
        spec = {**spec, "triton_dir": str(Path(tmp) / "triton")}
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        env = kt.subprocess_env()
        for name in ("TRITON_CACHE_DIR", "TRITON_CACHE_MANAGER", "AUTOTUNE_CACHE_DIR",
                     "VLLM_TRITON_FORCE_FIRST_CONFIG"):
            env.pop(name, None)
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "serve", str(spec_path),
                                   str(out_path)], capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{spec['mode']}: serving process ran past {timeout:.0f} s") from None
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"{spec['mode']}: serving process failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-4000:]}")
        return json.loads(out_path.read_text())


# -- the comparison -----------------------------------------------------------------------------------------------
def rows_of(call: dict, labels: list[str]) -> list[dict]:
    """Per kernel launch: each mode's config and median time, and its ratio to ours. Pure."""
    rows = []
    for launch in call["launches"]:
        times = {label: kt.stats(t)["median"] for label, t in launch["times_ms"].items() if t}
        ours = times.get(labels[0])
        rows.append({"tokens": call["tokens"], "kernel": launch["kernel"], "key": launch["key"],
                     "count": launch["count"], "ms": times,
                     "ratio": {label: t / ours for label, t in times.items()} if ours else {},
                     "verdict": {label: kt.noise_verdict(launch["times_ms"].get(labels[0]), launch["times_ms"][label])
                                 for label in labels[1:] if launch["times_ms"].get(label)},
                     "configs": {label: c["text"] for label, c in launch["configs"].items()},
                     "sources": launch["sources"], "errors": launch.get("errors", {})})
    return rows


def print_table(report: dict) -> None:
    if report["emulated"]:
        print(kt.EMULATED_NOTE)
    labels = report["labels"]
    print(f"{report['model']} TP {report['tp']}, target {report['target']}, {report['device']}; GPU time per "
          f"launch (median of {report['repeats']} do_bench medians, ms) and ratio to ours")
    print(f"{'T':>6s}  {'kernel':44s} " + " ".join(f"{lab[:15]:>15s}" for lab in labels))
    for r in report["rows"]:
        cells = [f"{r['ms'][lab]:.4f}" + (f" {r['ratio'][lab]:.2f}" if lab != labels[0] else "") if lab in r["ms"]
                 else "-" for lab in labels]
        print(f"{r['tokens']:6d}  {r['kernel'][:44]:44s} " + " ".join(f"{c:>15s}" for c in cells))
    print("\nper mode, the same traffic in a fresh serving process "
          f"({report['traffic']['calls']} varlen calls, 1..{report['traffic']['max_tokens']} tokens):")
    print(f"{'mode':14s} {'install s':>9s} {'warmup: tune s':>14s} {'compile s':>9s} {'traffic: tune s':>15s} "
          f"{'compile s':>9s} {'compiles':>8s} {'keys tuned after warmup':>23s} {'jit_monitor':>16s}")
    for mode, m in report["modes"].items():
        w, t = m["phases"]["warmup"], m["phases"]["traffic"]
        jm = f"{t['jit_monitor_events']} ({t['jit_monitor_loads']} loads)" if m.get("jit_monitor") else "-"
        print(f"{mode:14s} {m['install_s']:9.2f} {w['tune_s']:14.2f} {w['compile_s']:9.2f} {t['tune_s']:15.2f} "
              f"{t['compile_s']:9.2f} {t['compiles']:8d} {len(t['keys_tuned']):23d} {jm:>16s}")
    if report["emulated"]:
        print(kt.EMULATED_NOTE)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "serve":
        return serve_main(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", required=True, help="our cache, built for this target, model and TP")
    ap.add_argument("--target", default="vllm", help="fla, vllm or sglang (default vllm)")
    ap.add_argument("--model", default=None, help="preset (default qwen3.5-9b)")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--tokens", default=TIMED_TOKENS, help=f"token counts timed per kernel (default {TIMED_TOKENS})")
    ap.add_argument("--traffic-max", type=int, default=16384, help="largest batch of the traffic (default 16384)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    ap.add_argument("--plugin", action="store_true", help="ours through the vLLM plugin's register()")
    ap.add_argument("--no-cold-timing", action="store_true",
                    help="serve the cold mode but leave cold@T out of the kernel timing (each T tunes every key "
                         "again in its timing process: minutes of GPU time for a column ours already bounds)")
    ap.add_argument("--jit-monitor", action="store_true", help="activate vLLM's jit_monitor after warmup")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup-ms", type=int, default=10)
    ap.add_argument("--rep-ms", type=int, default=40)
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds per process")
    ap.add_argument("--emulate", action="store_true", help="fake sm_90 GPU: checks the script, times are fake")
    ap.add_argument("--json-out", default="bench_modes.json")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES) or "ours" not in modes:
        ap.error(f"--modes: a subset of {','.join(MODES)} holding ours")
    try:
        tokens = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        ap.error(f"--tokens: not a list of integers: {args.tokens}")
    if not Path(args.cache_dir).is_dir():
        print(f"error: cache dir {args.cache_dir} does not exist", file=sys.stderr)
        return 2
    kt.require_gpu(args.emulate, "bench_modes")
    from autotune_cache import shapes
    from autotune_cache.errors import AutotuneCacheError
    from autotune_cache.targets import get
    try:
        target = get(args.target)
        shape = shapes.resolve(args.model, None).per_rank(args.tp)
    except AutotuneCacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dtypes = target.default_dtypes(shape)
    batches = traffic(args.traffic_max)
    base = {"emulate": args.emulate, "target": args.target, "shape": shape.model_dump(), "dtypes": dtypes,
            "traffic": batches, "jit_monitor": args.jit_monitor, "cache_dir": str(Path(args.cache_dir).resolve())}
    report = {"model": args.model or shapes.DEFAULT_MODEL, "tp": args.tp, "target": args.target,
              "emulated": args.emulate, "repeats": args.repeats, "tokens": tokens, "modes": {},
              "traffic": {"calls": len(batches), "max_tokens": args.traffic_max, "batches": batches}}
    started = time.monotonic()

    def save(stage: str) -> None:   # after every part: a run killed at a time limit keeps what it measured
        report["complete"] = stage == "done"
        Path(args.json_out).write_text(json.dumps(report, indent=1))

    try:
        for mode in modes:
            print(f"{mode}: serving the traffic in a fresh process ...", file=sys.stderr)
            served = "plugin" if mode == "ours" and args.plugin else mode
            report["modes"][mode] = run_serve({**base, "mode": served, "warmup": WARMUPS[mode]}, args.timeout)
            save(mode)
        report["rows"] = _time(report, modes, shape, dtypes, tokens, args, on_row=lambda: save("rows"))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report["seconds"] = round(time.monotonic() - started, 1)
    save("done")
    print_table(report)
    print(f"JSON: {args.json_out} ({report['seconds']} s)")
    return 0


def _time(report, modes, shape, dtypes, tokens, args, on_row=lambda: None) -> list[dict]:
    """One timing process per T; every mode's config of each launch timed there, interleaved. The cold mode is an
    empty cache: the timing process tunes the key at this T itself (label cold@T)."""
    scratch, empty = tempfile.mkdtemp(prefix="bench-modes-scratch-"), tempfile.mkdtemp(prefix="bench-modes-empty-")
    caches = [{"label": "ours", "dir": str(Path(args.cache_dir).resolve())}]
    if "first-config" in modes:
        caches.append({"label": "first-config", "first_config": True})
    if "warmup" in modes:
        caches.append({"label": "warmup", "configs": report["modes"]["warmup"]["configs"]})
    if "cold" in modes and not args.no_cold_timing:
        caches.append({"label": "cold@T", "dir": empty})
    report["labels"] = [c["label"] for c in caches]
    rows = []
    try:
        for t in tokens:
            spec = {"emulate": args.emulate, "scratch_dir": scratch, "repeats": args.repeats,
                    "warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms, "cudagraph": False,
                    "calls": [{"target": args.target, "shape": shape.model_dump(), "dtypes": dtypes, "tokens": t,
                               "caches": caches}]}
            print(f"T={t}: timing every mode's config in one fresh process ...", file=sys.stderr)
            result = kt.run_worker(spec, args.timeout)
            report.update(device=result["device"], triton=result["triton"], torch=result["torch"],
                          first_config_rule=result["calls"][0].get("first_config_rule"))
            rows += rows_of(result["calls"][0], report["labels"])
            report["rows"] = rows
            on_row()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(empty, ignore_errors=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
