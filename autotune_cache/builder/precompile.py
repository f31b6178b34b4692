"""Compile every config of a key in parallel, before Triton benchmarks them one after another.

On a miss, Triton's Autotuner benchmarks its pruned configs in turn, and the first call of each compiles it: a
cold tune is mostly compiling, on one core. Here the build child hooks `Autotuner.prune_configs` (called once per
miss, right before the benchmarks): it warms up every pruned config through Triton's AsyncCompileMode on a thread
pool (autotuner/compiles.py), so the benchmark loop finds each config compiled in the JIT cache. The same
arguments give the same specialization, so the compiled variants are the ones the benchmark would have made.
Errors are left to the benchmark (a config that does not compile is timed as inf there, as before). That is the
fallback; a build on a GPU compiles in worker processes instead (below).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from .. import settings
from ..autotuner import compiles, hooks
from ..autotuner.kernels import innermost_jit
from ..autotuner.keys import tuning_key

stats = {"keys": 0, "configs": 0, "compiled": 0, "errors": 0}   # read by tests


def workers() -> int:
    return settings.current().compile_workers or os.cpu_count() or 1


_executor: ThreadPoolExecutor | None = None   # the compile threads of this process, started once


def _compile_pruned(call, tuner, kwargs):
    """After Triton's pruning: compile every pruned config on the threads, launching none."""
    pruned = call(tuner, kwargs)
    if len(pruned) > 1 and tuner.nargs is not None:
        args = list(tuner.nargs.values())   # the positional arguments of this run(), in order
        with compiles.async_compile(_executor):
            for config in pruned:
                try:   # kwargs holds run()'s grid and warmup: compile without launching
                    tuner.fn.run(*args, **dict(kwargs, warmup=True, **config.all_kwargs()))
                    stats["compiled"] += 1
                except Exception:  # noqa: BLE001 - the benchmark meets the same error and handles it
                    stats["errors"] += 1
        stats["keys"] += 1
        stats["configs"] += len(pruned)
    return pruned


def use_threads(n_workers: int | None = None) -> bool:
    """Compile each key's configs on `n_workers` threads in this process (the build's --compile-workers, handed to
    the child in its options; None: AUTOTUNE_CACHE_COMPILE_WORKERS, else every core); False where Triton lacks
    AsyncCompileMode or n <= 1. The first thread count installed stays."""
    n = workers() if n_workers is None else n_workers
    global _executor
    if n <= 1 or not compiles.can_compile_async():
        return False
    if _executor is None:
        _executor = ThreadPoolExecutor(n, thread_name_prefix="autotune-cache-compile")
        hooks.add("precompile", "prune_configs", _compile_pruned)
    return True


# -- compiling in worker processes ------------------------------------------------------------------------------
# Threads share one GIL with Triton's Python front end (AST -> TTIR, pass pipelines), so they overlap little
# (measured: BENCHMARKS.md). Worker processes make the units' serving calls themselves with Autotuner.run replaced:
# each compiles its share of every key's pruned configs (no launch, no timing, never an autotune file) and leaves
# the binaries in the shared Triton cache, where the benchmarking child then loads them instead of compiling.
# The workers run on a fake copy of the build GPU (emulation.py, with device.read()'s profile of the real one): no
# CUDA context and no GPU memory each, nothing launched. One process (the zygote) imports torch and the kernel
# modules, alongside the child's own imports, and forks the workers at "go": one import instead of one per core.
# By default the child waits for every unit's configs before its first timing; with --overlap-compile it times
# unit i as soon as unit i is compiled (a build of 41 s against 48 s, two runs on two H200 hosts, the same time
# benchmarking; stability over 3 builds 18 of 24 keys against 20 and 21 without: not told apart from noise).
NICE = 10   # below the benchmarking child, which times units next to them with --overlap-compile
# The longest the child waits for a unit's configs: past it, it compiles what is missing itself (a stuck worker
# then costs time, not the build).
WAIT_CAP_S = 600.0
ARGV_MAX = 100_000   # bytes of the zygote's JSON argument; past it the JSON goes through a temp file


def cores() -> int:
    """Cores this process may run on (taskset, cpusets), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def processes(default: int | None = None) -> int:
    """Worker processes per build child: AUTOTUNE_CACHE_COMPILE_PROCESSES, else `default`, else one per core but
    one (that one is the benchmarking child's)."""
    given = settings.current().compile_processes
    if given is not None:
        return given
    return default if default is not None else max(1, cores() - 1)


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())   # one write of a short line: atomic on a pipe shared by every worker


class _Share:
    """Autotuner.run for a worker: compile this worker's share of the configs the benchmark will time, launch
    nothing. Configs are dealt round-robin over the whole sequence of misses, not per key (per key, worker 0 would
    get the first config of all); every worker makes the same calls, so all deal alike. Keys of `foreign` (another
    build child tunes them: shard.py) get their first config only, the one the child launches."""

    def __init__(self, n: int, foreign: frozenset = frozenset()):
        self.n, self.wid, self.foreign = n, 0, foreign
        self.seen: set = set()   # (autotuner, key) dealt already: l2norm runs twice per call, units share keys
        self.dealt = 0

    def install(self) -> None:
        hooks.add("worker", "run", self.run)

    def run(self, call, tuner, *args, **kwargs) -> None:
        """Replaces Autotuner.run (never calls `call`): the configs of this worker's share compiled, none launched."""
        key = (id(tuner), tuning_key(tuner, args, kwargs))
        if key in self.seen:
            return
        self.seen.add(key)
        tuner.nargs = dict(zip(tuner.arg_names, args, strict=False))
        try:
            configs = tuner.prune_configs(kwargs) if len(tuner.configs) > 1 else tuner.configs
            if (innermost_jit(tuner.fn).__name__, key[1]) in self.foreign:
                configs = configs[:1]
            start, self.dealt = self.dealt, self.dealt + len(configs)
            for i, config in enumerate(configs):
                if (start + i) % self.n == self.wid:
                    try:   # kwargs holds run()'s grid and warmup: compile without launching
                        tuner.fn.run(*args, **dict(kwargs, warmup=True, **config.all_kwargs()))
                    except Exception as e:  # noqa: BLE001 - the benchmarking child meets the same error
                        import sys
                        print(f"precompile worker {self.wid}: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            tuner.nargs = None


def _empty(*size, generator=None, **kwargs):
    import torch
    return torch.empty(*size, **kwargs)


def _unit_imports(unit: dict, get) -> tuple[str, ...]:
    return (unit["kernel"]["module"],) if unit.get("kind") == "replay" else get(unit["target"]).imports


def probe_counts(tokens, probe_tokens=()) -> list[int]:
    """The probe passes the build child drives a unit at before its own token counts: each probe count below the
    unit's largest (selection.py); none for a unit without token counts (a replay unit). The workers drive them
    too: a kernel whose specialization depends on the size (SGLang's chunk_h takes NT_BUCKET, a constexpr from the
    chunk count) is another compile at the probe's 512 tokens than at the unit's 16384, and the child would compile
    it itself."""
    return [t for t in sorted(set(probe_tokens)) if tokens and t < max(tokens)]


def _zygote(cache_dir: str, units: list[dict], profile: dict | None, n: int, parent: int,
            foreign: list | None = None) -> None:
    import importlib
    import sys
    import time
    import traceback

    from .lifetime import die_with  # a killed build child leaves no zygote, and a killed zygote no worker
    started = time.monotonic()
    die_with(parent)
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.pop("TRITON_CACHE_AUTOTUNING", None)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""   # the fake GPU only: nothing here may reach the real one
    try:
        os.nice(NICE)
    except OSError:
        pass
    from ..shapes import RankShape
    from ..targets import get
    from . import emulation
    from .device import Profile
    emulation.fake_gpu(profile=Profile(**profile) if profile else None)
    import torch
    # Input values are never read (nothing launches); random ones cost seconds per call on the CPU at 16k tokens
    torch.randn = torch.rand = _empty
    share = _Share(n, frozenset((kernel, tuple(key)) for kernel, key in foreign or ()))
    share.install()
    for name in dict.fromkeys(m for unit in units for m in _unit_imports(unit, get)):
        importlib.import_module(name)   # the slow part (FLA: ~5-10 s), while the child imports the same
    _say(f"imported {time.monotonic() - started:.2f}")
    if sys.stdin.readline().strip() != "go":   # the parent may refuse the dir (another environment's cache)
        return
    go, zygote, workers = time.monotonic(), os.getpid(), {}
    for wid in range(n):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                die_with(zygote)
                share.wid = wid
                compiled = compiles.count() or {"compiled": 0}
                for index, unit in enumerate(units):
                    if unit.get("kind") == "replay":   # recorded calls (record/replay.py), Autotuner.run as above
                        from ..record.replay import replay_all
                        from ..record.schema import Record
                        replay_all([Record.model_validate(r) for r in unit["replay"]], "cpu")
                    else:
                        target, shape = get(unit["target"]), RankShape(**unit["shape"])
                        for tokens in [*unit.get("probes", ()), *unit["tokens"]]:
                            target.run(shape, unit["dtypes"], tokens, "cpu")
                    _say(f"done {wid} {index} {time.monotonic() - go:.2f} {compiled['compiled']}")
                code = 0
            except BaseException:  # noqa: BLE001 - its configs are left to the benchmark
                traceback.print_exc()
            finally:
                os._exit(code)   # no interpreter teardown in a fork: the zygote's atexit and buffers are not ours
        workers[pid] = wid
    while workers:
        pid, status = os.wait()
        if pid in workers:
            _say(f"exit {workers.pop(pid)} {os.waitstatus_to_exitcode(status)}")


class Pool:
    """`n` worker processes compiling every config of `units` (in order) into the cache dir; `ready(i)` waits
    for units 0..i. Best effort: a worker that fails only leaves its configs to the benchmark. The zygote is a
    plain subprocess (the build child is a daemon process, which multiprocessing forbids to have children) in the
    child's process group, so a timeout kill takes it and its workers too.
    `profile`: the build GPU (device.Profile as a dict), None = emulation's default H100 (emulated builds).
    `foreign`: [kernel, key] of the keys another build child tunes (first config only, see _Share). Each unit
    dict may hold `probes`: the probe counts the child drives first (probe_counts()), made by the workers too."""

    def __init__(self, cache_dir: str, units: list[dict], n: int, profile: dict | None = None,
                 foreign: list | None = None):
        import json
        import subprocess
        import sys
        import tempfile
        import threading

        self.n, self.units = n, len(units)
        self.import_s: float | None = None
        self.finished: list[dict[int, float]] = [{} for _ in range(n)]   # per worker: unit index -> s since go
        self.compiled = [0] * n            # per worker: kernels compiled so far (not found in the cache)
        self.exits: dict[int, int] = {}    # worker -> exit code
        self.ended = False                 # the zygote's output closed: nothing more will come
        self._cond = threading.Condition()
        self.stderr = tempfile.TemporaryFile()   # the zygote's and workers' tracebacks, for a failed worker's why
        argv = json.dumps([cache_dir, units, profile, n, os.getpid(), foreign or []])
        if len(argv) > ARGV_MAX:   # replay units carry their records: too long for one argument (128 KiB on Linux)
            self._argv_file = tempfile.NamedTemporaryFile("w", prefix="autotune-cache-units-", suffix=".json")
            self._argv_file.write(argv)
            self._argv_file.flush()
            argv = "@" + self._argv_file.name
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, argv],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        threading.Thread(target=self._read, name="autotune-cache-pool", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None   # stdout=PIPE
        for line in self.proc.stdout:
            word, *rest = line.split() or [""]
            with self._cond:
                if word == "imported" and len(rest) == 1:
                    self.import_s = float(rest[0])
                elif word == "done" and len(rest) == 4:
                    self.finished[int(rest[0])][int(rest[1])] = float(rest[2])
                    self.compiled[int(rest[0])] = int(rest[3])
                elif word == "exit" and len(rest) == 2:
                    self.exits[int(rest[0])] = int(rest[1])
                self._cond.notify_all()
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def go(self) -> None:
        """Start compiling. Until then the zygote only imports: nothing is written to the cache dir."""
        assert self.proc.stdin is not None   # stdin=PIPE
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.close()
        except OSError:   # died at start: every config is left to the benchmark
            pass

    def _gone(self, wid: int) -> bool:
        return self.ended or wid in self.exits

    def failed(self) -> int:
        """Workers that ended without finishing every unit (all of them where the zygote died)."""
        return sum(len(self.finished[w]) < self.units and self._gone(w) for w in range(self.n))

    def _report(self, **fields) -> dict:
        report = {"workers": self.n, "failed": self.failed(), **fields}
        if report["failed"]:   # the last line written to stderr: the exception that ended a worker (or the zygote)
            lines = []
            if not self.stderr.closed:   # closed: the pool was closed (killed) first
                self.stderr.seek(0, os.SEEK_END)
                self.stderr.seek(max(0, self.stderr.tell() - 4000))
                lines = [ln for ln in self.stderr.read().decode(errors="replace").splitlines() if ln.strip()]
            report["error"] = lines[-1][:300] if lines else f"exit codes {sorted(set(self.exits.values()))}"
        return report

    def ready(self, index: int, timeout: float = WAIT_CAP_S) -> dict:
        """Block until every worker has compiled its share of units 0..index or is gone. Returns {workers, failed,
        seconds (waited here), ready_s (since "go", when the slowest worker finished unit `index`), import_s,
        compiled (kernels the workers compiled so far)}, and `error` (the last line of their stderr) if any failed."""
        import time
        start = time.monotonic()
        with self._cond:
            self._cond.wait_for(lambda: all(index in self.finished[w] or self._gone(w) for w in range(self.n)),
                                timeout)
            times = [f[index] for f in self.finished if index in f]
            return self._report(seconds=round(time.monotonic() - start, 2),
                                ready_s=round(max(times), 2) if times else None, import_s=self.import_s,
                                compiled=sum(self.compiled))

    def wait(self) -> dict:
        """Block until every worker has ended: {workers, failed, import_s, compile_s (the slowest worker's
        compiling, from "go"), compiled (per worker)}."""
        with self._cond:
            self._cond.wait_for(lambda: self.ended)
        self.proc.wait()
        times = [t for f in self.finished for t in f.values()]
        return self._report(import_s=self.import_s, compile_s=round(max(times), 2) if times else None,
                            compiled=list(self.compiled))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()   # its workers follow (PR_SET_PDEATHSIG)
        self.proc.wait()
        self.stderr.close()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


def compile_in_processes(cache_dir: str, units: list[dict], n: int | None = None,
                         profile: dict | None = None, probe_tokens: tuple[int, ...] = ()) -> dict:
    """Compile every config the units will benchmark in `n` worker processes (default: every core but one), wait.
    `probe_tokens`: the child's probe counts, driven first as each unit's `probes` (probe_counts(), as the child
    gives them to Pool)."""
    n = processes() if n is None else n
    if n <= 1:
        return {"workers": 0, "failed": 0, "import_s": None, "compile_s": None, "compiled": []}
    if probe_tokens:
        units = [dict(u, probes=probe_counts(u["tokens"], probe_tokens)) for u in units]
    pool = Pool(cache_dir, units, n, profile)
    try:
        pool.go()
        return pool.wait()
    finally:
        pool.close()


if __name__ == "__main__":
    import json
    import sys

    given = sys.argv[1]
    if given.startswith("@"):
        with open(given[1:]) as f:
            given = f.read()
    _zygote(*json.loads(given))
