"""Shared by bench_winners.py and bench_stability.py: time one autotuned kernel launch with a given config.

Parent side (no CUDA, no kernel import): `require_gpu`, `run_worker`, and the pure helpers (`key_id`,
`config_text`, `stats`, `noise_verdict`). Worker side (`python scripts/_kernel_timing.py SPEC.json OUT.json`, a
fresh process): makes a target's serving call once and captures every launch of an autotuned kernel (a hook on
`Autotuner.run`, autotune_cache.autotuner.hooks: the autotuner, its args and kwargs, the tuning key). For each cache
dir it resolves the winner of that key itself, the way Triton would read it: Triton's own `check_disk_cache` against
the cache dir through a read-only cache manager, this thread's lookup only (disk.reading; same disk key:
triton_key, backend, kernel source, env vars, key, configs). Nothing is ever written into a cache dir. Failing
that, an autotune file of the same kernel and key in the dir (a cache built with another Triton build or env vars);
failing that, the key is tuned in this process (Triton's benchmark, disk cache off) and reported as such: what a
server with that cache would do.
The call itself runs with the first cache's winners forced into the autotuner (`tuner.cache[key] = config`), so
nothing is tuned unless a key is missing. Each captured launch is then re-launched alone with each cache's
config, `tuner.fn.run(*args, **kwargs, **config.all_kwargs())` (plus the autotuner's reset/restore hooks, as
Triton's own benchmark does), and timed with `triton.testing.do_bench` (L2 flushed before each run; or CUDA graphs:
`do_bench_cudagraph`), `repeats` times, the caches interleaved and their order alternated every repeat.
Compiled kernels go to a scratch TRITON_CACHE_DIR. Under emulation (fake sm_90 GPU) timings are fake.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))   # the package of this checkout, whatever is installed

EMULATED_NOTE = "EMULATED (fake sm_90 GPU): every time below is fake and means nothing; this run only checks the script"
IN_PROCESS = "tuned in-process (not from the cache)"
FIRST_CONFIG = "first-config"   # a --baseline that is no dir: what VLLM_TRITON_FORCE_FIRST_CONFIG launches
SOURCES = {
    "cache": "the autotune file Triton reads from this dir (same disk key)",
    "first valid config": "the kernel's first config that compiles and launches (vLLM's force_first_config rule)",
    "served process": "the config a serving process ended up using for this key (bench_modes.py)",
    "cache (kernel+key match)": "an autotune file of the same kernel and key in this dir, under another disk key "
                                "(built with another Triton build, ptxas or env vars: this process would miss it)",
    "tuned in-process": "not in the cache: tuned in this process, as a server with this cache would",
}


# -- pure helpers (parent and worker) -------------------------------------------------------------------------
def key_id(kernel: str, key) -> str:
    """One string per (kernel, tuning key), the same for a key read from JSON and one formed at runtime."""
    return kernel + "|" + json.dumps(list(key), default=str)


def config_dict(config) -> dict:
    """What makes a config (triton.Config or its stored __dict__): kwargs and launch options. num_warps and
    num_stages matter: two configs with the same kwargs and other warps are different kernels."""
    d = config if isinstance(config, dict) else vars(config)
    return {"kwargs": dict(d.get("kwargs") or {}), "num_warps": d.get("num_warps"), "num_stages": d.get("num_stages"),
            "num_ctas": d.get("num_ctas"), "maxnreg": d.get("maxnreg")}


def config_text(config) -> str:
    """'BV=32 warps=4 stages=4' (ctas shown only when not 1, maxnreg only when set)."""
    d = config_dict(config)
    parts = [f"{k}={v}" for k, v in d["kwargs"].items()]
    parts += [f"warps={d['num_warps']}", f"stages={d['num_stages']}"]
    if d["num_ctas"] not in (None, 1):
        parts.append(f"ctas={d['num_ctas']}")
    if d["maxnreg"] is not None:
        parts.append(f"maxnreg={d['maxnreg']}")
    return " ".join(parts)


def key_text(key) -> str:
    """(128, 4, 'torch.bfloat16', 'torch.float32') -> '128,4|bf16,fp32'."""
    short = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32", "torch.int32": "i32",
             "torch.int64": "i64"}
    values = [str(k) for k in key if not (isinstance(k, str) and k.startswith("torch."))]
    dtypes = [short.get(k, k) for k in key if isinstance(k, str) and k.startswith("torch.")]
    return ",".join(values) + ("|" + ",".join(dtypes) if dtypes else "")


def stats(times: list[float]) -> dict:
    """min / median / max of the repeats (each repeat is one do_bench median, in ms)."""
    return {"min": min(times), "median": statistics.median(times), "max": max(times), "n": len(times)}


def noise_verdict(ours: list[float], base: list[float]) -> str:
    """'slower' when every repeat of ours took longer than every repeat of the baseline (min(ours) > max(base)),
    'faster' for the reverse, else 'noise'. Repeats are interleaved, so drift of the GPU (clocks, heat) falls on
    both. If both sides measured the same kernel (same distribution), 5 repeats each land in one direction's
    disjoint order by chance with probability 1/252 (1 / C(10,5)); the looser rule "median(ours) > max(base)"
    fires by chance about 8% of the time with 5 repeats (C(5,3) / C(10,3)), too often for a flag."""
    if not ours or not base:
        return "n/a"
    if min(ours) > max(base):
        return "slower"
    if max(ours) < min(base):
        return "faster"
    return "noise"


# -- parent side ----------------------------------------------------------------------------------------------
def require_gpu(emulate: bool, what: str) -> None:
    """Exit 2 with one line when there is no CUDA GPU and the run is not emulated."""
    if emulate:
        return
    try:
        import torch
        ok = torch.cuda.is_available()
    except Exception:   # noqa: BLE001 - no torch or a broken driver: no GPU either way
        ok = False
    if not ok:
        print(f"error: {what} needs a CUDA GPU and none is visible here (pass --emulate to smoke-test the script on "
              "a fake sm_90 GPU: its timings are meaningless)", file=sys.stderr)
        sys.exit(2)


def subprocess_env(extra: dict | None = None) -> dict:
    """Environment of a child: this checkout first on PYTHONPATH (its package, not another installed one)."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_worker(spec: dict, timeout: float) -> dict:
    """Run the worker in a fresh process on `spec` and return its result. Raises RuntimeError with the tail of
    its stderr when it fails."""
    with tempfile.TemporaryDirectory(prefix="kernel-timing-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(spec_path), str(out_path)],
                                  capture_output=True, text=True, env=subprocess_env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timing worker ran past {timeout:.0f} s") from None
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"timing worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(out_path.read_text())


# -- worker side ----------------------------------------------------------------------------------------------
class _Miss(Exception):
    pass


class _ReadOnlyManager:
    """Triton's FileCacheManager for lookups only: never creates a dir, never writes (a miss raises _Miss)."""

    def __init__(self, root: str, hex_key: str):
        import base64
        self.cache_dir = os.path.join(root, base64.b32encode(bytes.fromhex(hex_key)).decode().rstrip("="))

    def get_file(self, filename):
        path = os.path.join(self.cache_dir, filename)
        return path if os.path.isfile(path) else None

    def put(self, *args, **kwargs):
        raise _Miss()


class Resolver:
    """Per cache dir: the winner of a (kernel, key), found as described in the module doc."""

    def __init__(self, caches: list[dict]):
        from autotune_cache.cache.scan import scan
        self.caches = caches
        self.records = {}
        for c in caches:
            if "dir" not in c:   # a first-config or served-configs "cache": nothing on disk
                continue
            by_key = {}
            for r in scan(c["dir"]).autotune:
                by_key.setdefault(key_id(r.kernel, r.key), []).append(r)
            self.records[c["label"]] = by_key
        self.memo: dict[tuple, tuple] = {}
        self.first_config_source: str | None = None   # set by capture() where a cache is FIRST_CONFIG

    def exact(self, root: str, tuner, key: tuple, configs):
        """Triton's own disk lookup (no hook of ours) against `root`, read-only: this thread's lookup takes its cache
        manager from disk.reading, the process's get_cache_manager is never swapped. The winner Config, or None on a
        miss."""
        from autotune_cache.autotuner import disk, hooks

        def miss():
            raise _Miss()

        had = key in tuner.cache
        saved = tuner.cache.pop(key, None)
        saved_timings = getattr(tuner, "configs_timings", None)
        try:
            with disk.reading(lambda hex_key: _ReadOnlyManager(root, hex_key)):
                hooks.triton("check_disk_cache")(tuner, key, configs, miss)
            return tuner.cache.pop(key, None)
        except _Miss:
            return None
        finally:
            tuner.configs_timings = saved_timings
            if had:
                tuner.cache[key] = saved

    def resolve(self, label: str, root: str, tuner, kernel: str, key: tuple, configs):
        """(Config or None, source). None: not in this cache (the caller tunes it in-process)."""
        from triton import Config
        memo_key = (label, key_id(kernel, key))
        served = next(c for c in self.caches if c["label"] == label).get("configs")
        if served is not None and memo_key not in self.memo:   # a serving process's configs, by key
            found = served.get(key_id(kernel, key))
            self.memo[memo_key] = ((Config(**found), "served process") if found is not None
                                   else (None, "tuned in-process"))
        if memo_key not in self.memo:
            found, source = None, "tuned in-process"
            try:
                found = self.exact(root, tuner, key, configs)
            except Exception as e:   # noqa: BLE001 - another Triton's check_disk_cache: fall back to the scan
                print(f"exact lookup failed for {kernel} ({type(e).__name__}: {e}); matching by kernel and key",
                      file=sys.stderr)
            if found is not None:
                source = "cache"
            else:
                winners = {json.dumps(config_dict(r.winner), sort_keys=True): r.winner
                           for r in self.records[label].get(key_id(kernel, key), [])}
                if len(winners) == 1:   # several files with different winners: ambiguous, tuned instead
                    found, source = Config(**next(iter(winners.values()))), "cache (kernel+key match)"
            self.memo[memo_key] = (found, source)
        return self.memo[memo_key]


class Launch:
    """One captured call of an autotuned kernel, and the config each cache gives its key."""

    def __init__(self, tuner, args, kwargs, kernel, key, signature):
        self.tuner, self.args, self.kwargs, self.kernel, self.key = tuner, args, kwargs, kernel, key
        self.signature = signature
        self.count = 1
        self.configs: dict[str, object] = {}   # label -> triton.Config
        self.sources: dict[str, str] = {}      # label -> key of SOURCES


def _signature(kernel, key, args, kwargs) -> str:
    """Launches with the same kernel, key and argument shapes are one row (q and k through l2norm)."""
    def describe(a):
        if hasattr(a, "shape") and hasattr(a, "stride"):
            return [list(a.shape), list(a.stride()), str(a.dtype)]
        return None if callable(a) else repr(a)
    return json.dumps([kernel, list(key), [describe(a) for a in args],
                       sorted((k, describe(v)) for k, v in kwargs.items())], default=str)


def first_config_rule():
    """(run, name): a function run(autotuner, *args, **kwargs), in place of Autotuner.run, that launches the first
    config that compiles and launches, as VLLM_TRITON_FORCE_FIRST_CONFIG does. vLLM's own
    (vllm/triton_utils/force_first_config.py) where it imports: its install() assigns Autotuner.run, so it runs
    inside hooks.take, which hands its function back and puts the method back as it was; else the same rule written
    here. Never left in Triton: callers call it from a hook of theirs."""
    from autotune_cache.autotuner import hooks, timing
    autotuning = os.environ.get("TRITON_CACHE_AUTOTUNING")

    def install():
        from vllm.triton_utils import force_first_config  # with VLLM_TRITON_FORCE_FIRST_CONFIG set, it installs
        force_first_config.install()                      # itself at this import; else here

    try:
        vllms = hooks.take("run", install)
        if vllms is not None:
            return vllms, "vllm.triton_utils.force_first_config"
    except ImportError:
        pass
    finally:
        if autotuning is None:   # `import vllm` sets it (>= 0.19): the timing process keeps tuning off disk
            os.environ.pop("TRITON_CACHE_AUTOTUNING", None)
    cannot_run = timing.config_errors()

    def run(self, *args, **kwargs):
        for config in self.configs:
            try:
                if config.pre_hook is not None:
                    config.pre_hook({**dict(zip(self.arg_names, args, strict=False)), **kwargs, **config.all_kwargs()})
                ret = self.fn.run(*args, **kwargs, **config.all_kwargs())
            except cannot_run:
                continue
            self.best_config = config
            return ret
        raise RuntimeError(f"no valid config for {self.base_fn.__name__}")
    return run, "the same rule, written here (vLLM not importable)"


def capture(call, resolver: Resolver, only: set[str] | None = None) -> list[Launch]:
    """Run `call()` with a hook on Autotuner.run; return the distinct autotuned launches it made."""
    from autotune_cache.autotuner import hooks
    from autotune_cache.autotuner.kernels import innermost_jit
    from autotune_cache.autotuner.keys import tuning_key
    launches: dict[str, Launch] = {}
    tuned_here: dict[str, object] = {}
    first_labels = [c["label"] for c in resolver.caches if c.get("first_config")]
    first_run = None
    if first_labels:
        first_run, resolver.first_config_source = first_config_rule()
    first_picked: dict[str, object] = {}

    def first_valid(self, kid, args, kwargs):
        if kid not in first_picked:   # it launches the kernel once, as the server's call would
            self.best_config = None
            first_run(self, *args, **kwargs)
            first_picked[kid] = self.best_config or self.configs[0]
        return first_picked[kid]

    def run(call_on, self, *args, **kwargs):   # call_on(self, ...): the later phases' hooks, then Triton's run
        if len(self.configs) <= 1:
            return call_on(self, *args, **kwargs)
        kernel, key = innermost_jit(self.fn).__name__, tuning_key(self, args, kwargs)
        kid = key_id(kernel, key)
        self.nargs = dict(zip(self.arg_names, args, strict=False))
        configs = self.prune_configs(kwargs)
        self.nargs = None
        resolved = {c["label"]: ((first_valid(self, kid, args, kwargs), "first valid config") if c.get("first_config")
                                 else resolver.resolve(c["label"], c.get("dir"), self, kernel, key, configs))
                    for c in resolver.caches}
        if any(cfg is None for cfg, _ in resolved.values()) and kid not in tuned_here:
            # missing from a cache: Triton's own benchmark in this process, nothing read from or written to disk
            self.cache.pop(key, None)
            cache_results, self.cache_results = self.cache_results, False
            try:
                ret = call_on(self, *args, **kwargs)
            finally:
                self.cache_results = cache_results
            tuned_here[kid] = self.best_config
        else:
            first = next(iter(resolved.values()))[0] or tuned_here[kid]
            self.cache[key] = first   # forced: no disk lookup, no benchmark
            ret = call_on(self, *args, **kwargs)
        if only is None or kid in only:
            sig = _signature(kernel, key, args, kwargs)
            if sig in launches:
                launches[sig].count += 1
            else:
                launch = launches[sig] = Launch(self, args, kwargs, kernel, key, sig)
                for label, (cfg, source) in resolved.items():
                    launch.configs[label] = cfg if cfg is not None else tuned_here[kid]
                    launch.sources[label] = source
        return ret

    # "listen": this process's one hook on run (emulation hooks _bench only). It decides each launch's config itself
    # (forced into tuner.cache, or tuned with the disk off) and calls on, so it must sit under no phase that replaces
    # run; listen is the last phase that calls on.
    hooks.add("listen", "run", run)
    try:
        call()
    finally:
        hooks.remove("listen", "run", run)
    return list(launches.values())


def _launcher(launch: Launch, config):
    """A zero-argument call that launches the kernel alone with `config`, as Triton's autotuner benchmarks it."""
    tuner = launch.tuner
    current = dict(launch.kwargs, **config.all_kwargs())
    nargs = {**dict(zip(tuner.arg_names, launch.args, strict=False)), **current}

    def call():
        if config.pre_hook:
            config.pre_hook(nargs)
        tuner.pre_hook(nargs)
        tuner.fn.run(*launch.args, **current)
        tuner.post_hook(nargs, exception=None)
    return call


def _bencher(spec: dict):
    if spec["emulate"]:
        from autotune_cache.autotuner.timing import active_benchmarker
        fake = active_benchmarker()   # the fake GPU's (emulation.fake_gpu made its driver the active one)
        return lambda call: fake(call, quantiles=(0.5, 0.2, 0.8))[0]
    import triton.testing
    if spec.get("cudagraph"):
        return lambda call: triton.testing.do_bench_cudagraph(call, rep=spec["rep_ms"], quantiles=(0.5, 0.2, 0.8))[0]
    return lambda call: triton.testing.do_bench(call, warmup=spec["warmup_ms"], rep=spec["rep_ms"],
                                                quantiles=(0.5, 0.2, 0.8))[0]


def time_launches(launches: list[Launch], labels: list[str], repeats: int, bench, distinct_only: bool,
                  sync=lambda: None) -> list[dict]:
    """Time every launch with each label's config, `repeats` times, labels interleaved (order reversed every other
    repeat). distinct_only: time each distinct config once per repeat and give its times to every label using it."""
    rows = []
    for launch in launches:
        row = {"kernel": launch.kernel, "key": list(launch.key), "key_id": key_id(launch.kernel, launch.key),
               "count": launch.count, "configs": {}, "sources": dict(launch.sources), "times_ms": {}, "errors": {}}
        groups: dict[str, list[str]] = {}   # config json -> labels
        for label in labels:
            cfg = launch.configs[label]
            row["configs"][label] = {"config": config_dict(cfg), "text": config_text(cfg)}
            cid = json.dumps(config_dict(cfg), sort_keys=True)
            groups.setdefault(cid if distinct_only else label, []).append(label)
        calls = {g: _launcher(launch, launch.configs[members[0]]) for g, members in groups.items()}
        times = {g: [] for g in groups}
        for g, fn in calls.items():   # first launch compiles (or loads) the config: never timed
            try:
                fn()
                sync()
            except Exception as e:   # noqa: BLE001 - a config that cannot run here: reported, not fatal
                for label in groups[g]:
                    row["errors"][label] = f"{type(e).__name__}: {e}"[:500]
        order = [g for g in groups if not any(label in row["errors"] for label in groups[g])]
        for r in range(repeats):
            for g in (order if r % 2 == 0 else order[::-1]):
                times[g].append(bench(calls[g]))
        for g, members in groups.items():
            for label in members:
                if label not in row["errors"]:
                    row["times_ms"][label] = times[g]
        rows.append(row)
    return rows


def worker_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec["emulate"]:
        from autotune_cache.builder import emulation
        emulation.fake_gpu()
    os.environ["TRITON_CACHE_DIR"] = spec["scratch_dir"]   # compiled kernels only: autotuning never touches disk
    os.environ.pop("TRITON_CACHE_AUTOTUNING", None)
    import importlib

    import torch

    from autotune_cache.shapes import RankShape
    from autotune_cache.targets import get
    device = "cpu" if spec["emulate"] else "cuda"
    sync = (lambda: None) if spec["emulate"] else torch.cuda.synchronize
    bench = _bencher(spec)
    result = {"emulated": spec["emulate"], "calls": [],
              "device": "fake sm_90 (emulated)" if spec["emulate"] else torch.cuda.get_device_name(),
              "torch": torch.__version__}
    import triton
    result["triton"] = triton.__version__
    for call in spec["calls"]:
        target = get(call["target"])
        for module in target.imports:
            importlib.import_module(module)
        resolver = Resolver(call["caches"])
        shape = RankShape(**call["shape"])
        only = set(call["only"]) if call.get("only") is not None else None

        def run(target=target, shape=shape, call=call):   # this iteration's, bound (not the loop's last)
            target.run(shape, call["dtypes"], call["tokens"], device)
            sync()

        launches = capture(run, resolver, only)
        rows = time_launches(launches, [c["label"] for c in call["caches"]], spec["repeats"], bench,
                             call.get("distinct_only", False), sync)
        result["calls"].append({"tokens": call["tokens"], "target": call["target"], "shape": call["shape"],
                                "launches": rows,
                                "first_config_rule": resolver.first_config_source})
        del launches
        if not spec["emulate"]:
            torch.cuda.empty_cache()
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1], sys.argv[2]))
