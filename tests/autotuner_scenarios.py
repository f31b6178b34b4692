"""`python autotuner_scenarios.py SCENARIO CACHE_DIR`: one scenario of test_autotuner.py, run on the fake GPU with
real Triton in a process of its own (the room patches Triton's Autotuner for the whole process). Prints JSON."""
import json
import os
import sys
import threading
from pathlib import Path

scenario, cache_dir = sys.argv[1], sys.argv[2]
os.environ["TRITON_CACHE_DIR"] = cache_dir
os.environ["TRITON_CACHE_AUTOTUNING"] = "1"
from autotune_cache.builder import emulation  # noqa: E402

emulation.fake_gpu()
import triton  # noqa: E402
import triton.runtime.autotuner as at  # noqa: E402

from autotune_cache.autotuner import disk, hooks  # noqa: E402
from autotune_cache.shapes import preset  # noqa: E402

TRITONS = {m: getattr(at.Autotuner, m) for m in hooks.METHODS if m != "_bench"}   # _bench: emulation's already
TRITON_GCM = at.get_cache_manager
SHAPE = preset("qwen3.5-9b").per_rank(1)


def call(tokens):
    """The toy kernel at `tokens`: its key's NB (and so its disk key) depends on the token count."""
    import toy_kernels
    toy_kernels.run(SHAPE, {"act": "bfloat16"}, tokens, "cpu")


def wrapped_once():
    """Each patched method is one wrapper straight around Triton's own (never a wrapper of a wrapper)."""
    return {m: getattr(at.Autotuner, m).__wrapped__ is TRITONS[m] for m in TRITONS if m in hooks._originals}


def declared_order():
    """Hooks added in the reverse of hooks.PHASES still run in PHASES order, around a method and at an event."""
    calls = []
    for phase in reversed(hooks.PHASES):
        def around(call_, tuner, kwargs, phase=phase):
            calls.append(["prune_configs", phase])
            return call_(tuner, kwargs)

        hooks.add(phase, "prune_configs", around)
        disk.add_miss_hook(lambda tuner, key, phase=phase: calls.append(["miss", phase]), phase=phase)
    call(300)
    return {"calls": calls, "phases": list(hooks.PHASES)}


def strict_after_record():
    """A strict server's miss hook added BEFORE the recorder starts: the recorder's still runs first (its record
    says "miss"), then the strict one raises."""
    from autotune_cache.errors import CacheMissError
    from autotune_cache.record import recorder, store

    def strict(tuner, key):
        raise CacheMissError("strict: would be benchmarked")

    disk.add_miss_hook(strict, phase="serve")
    path = os.path.join(cache_dir, "record.jsonl")
    rec = recorder.start(path)
    raised = None
    try:
        call(300)
    except CacheMissError as e:
        raised = str(e)
    recorder.stop(rec)
    return {"raised": raised, "outcomes": [r.outcome for r in store.read([path]).records],
            "miss_phases": list(hooks.phases("miss"))}


def double_install():
    """Every room that hooks Triton, installed twice: each method wrapped once, each hook added once."""
    from autotune_cache.builder import precompile, selection
    from autotune_cache.record import recorder
    for _ in range(2):
        emulation.fake_gpu()
        selection.use(selection.Settings())
        precompile.use_threads(2)
        recorder.start(os.path.join(cache_dir, "record.jsonl"))
        disk.add_launch_listener(launched)
        with disk.dry():
            pass
    call(300)
    return {"wrapped_once": wrapped_once(),
            "phases": {at_: list(hooks.phases(at_)) for at_ in hooks.METHODS + hooks.EVENTS},
            "launches": len(launches)}


launches = []


def launched(launch):
    launches.append(launch)


def concurrent_add():
    """Two threads add hooks at once, each to methods no hook was added to before (so both race to install the
    wrapper too): every hook is there once, every method wrapped once, and a call runs them all."""
    n, barrier, ran = 100, threading.Barrier(2), []

    def adder(phase):
        barrier.wait()
        for i in range(n):
            for method in ("run", "prune_configs"):
                def hook(call_, tuner, *args, _i=i, _m=method, _p=phase, **kwargs):
                    ran.append((_m, _p, _i))
                    return call_(tuner, *args, **kwargs)
                hooks.add(phase, method, hook)

    threads = [threading.Thread(target=adder, args=(p,)) for p in ("record", "listen")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    call(300)
    return {"wrapped_once": wrapped_once(), "hooks": {m: len(hooks.phases(m)) for m in ("run", "prune_configs")},
            "ran": {m: len({(p, i) for mm, p, i in ran if mm == m}) for m in ("run", "prune_configs")},
            "order": {m: [p for mm, p, i in ran if mm == m][:1] + [p for mm, p, i in ran if mm == m][-1:]
                      for m in ("run", "prune_configs")}}


def two_threads():
    """Two threads look up two kernels at once (one Autotuner each: an Autotuner object is not Triton's to share
    between threads, run() keeps the call's arguments on it): each lookup is inside check_disk_cache while the
    other's is (both wait in the miss hook for the other). Each must see its own cache manager: its Lookup's path
    is the file of its own kernel and key."""
    barrier, seen = threading.Barrier(2, timeout=120), {}
    gcm_before = at.get_cache_manager

    def meet(tuner, key):
        if threading.current_thread().name.startswith("lookup-"):
            barrier.wait()

    def listener(lookup):
        seen.setdefault(threading.current_thread().name, []).append(lookup)

    disk.add_listener(listener)
    disk.add_miss_hook(meet, phase="listen")
    gcm_during = at.get_cache_manager
    errors = []

    def lookup(make_call):
        try:
            make_call()
        except BaseException as e:  # noqa: BLE001 - reported
            errors.append(f"{type(e).__name__}: {e}")

    import record_kernels
    threads = [threading.Thread(target=lookup, args=(f,), name=f"lookup-{name}")
               for name, f in (("toy", lambda: call(300)), ("copy", lambda: record_kernels.copy(1000)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = {"errors": errors, "replaced_once": gcm_during is not gcm_before and at.get_cache_manager is gcm_during}
    for name, found in seen.items():
        (lk,) = found
        on_disk = json.loads(lk.path.read_text())["key"] if lk.path and lk.path.exists() else None
        out[name] = {"kernel": lk.kernel, "key": list(lk.key), "file_key": on_disk, "hit": lk.hit,
                     "file": lk.path.name if lk.path else None, "dir": lk.path.parent.name if lk.path else None}
    return out


def reading_another_dir():
    """One thread makes Triton's own lookup of the toy key against another cache dir (disk.reading) while another
    thread's watched lookup of another kernel is inside Triton's (both wait in the middle for the other): the reading
    thread's manager is its factory's, the other thread's is Triton's for TRITON_CACHE_DIR, and the global is the one
    wrapper throughout."""
    import base64
    import shutil

    import record_kernels
    import toy_kernels
    call(300)                                  # the toy key, tuned into cache_dir ...
    other = cache_dir.rstrip("/") + "-other"
    shutil.copytree(cache_dir, other)          # ... and found in `other` too
    tuner = toy_kernels.toy_scale_kernel
    (key,) = tuner.cache
    winner = tuner.cache.pop(key)
    barrier, asked, errors, seen = threading.Barrier(2, timeout=120), [], [], {}

    class ReadOnly:   # what scripts/_kernel_timing.py hands disk.reading: the dir's file, never a write
        def __init__(self, hex_key):
            asked.append(hex_key)
            self.cache_dir = os.path.join(other, base64.b32encode(bytes.fromhex(hex_key)).decode().rstrip("="))

        def get_file(self, filename):
            barrier.wait()
            path = os.path.join(self.cache_dir, filename)
            return path if os.path.isfile(path) else None

        def put(self, *args, **kwargs):
            raise AssertionError("a reading manager was written to")

    def read():
        try:
            with disk.reading(ReadOnly):
                seen["hit"] = hooks.triton("check_disk_cache")(tuner, key, tuner.configs, lambda: None)
        except BaseException as e:  # noqa: BLE001 - reported
            errors.append(f"{type(e).__name__}: {e}")

    def meet(tuner_, key_):
        if threading.current_thread().name == "lookup":
            barrier.wait()

    def look():
        try:
            record_kernels.copy(1000)
        except BaseException as e:  # noqa: BLE001 - reported
            errors.append(f"{type(e).__name__}: {e}")

    disk.add_listener(lambda lookup: seen.setdefault("lookup", lookup))
    disk.add_miss_hook(meet, phase="listen")
    gcm = at.get_cache_manager
    threads = [threading.Thread(target=read, name="reading"), threading.Thread(target=look, name="lookup")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lookup = seen["lookup"]
    return {"errors": errors, "hit": seen.get("hit"), "winner": tuner.cache.get(key) == winner, "asked": len(asked),
            "lookup_kernel": lookup.kernel, "lookup_root": str(lookup.path.parent.parent),
            "cache_dir": str(Path(cache_dir)), "one_wrapper": at.get_cache_manager is gcm and gcm is not TRITON_GCM}


def take_a_replacement():
    """Another's code assigns Autotuner.run (as vLLM's force_first_config.install does) inside hooks.take: its function
    is handed back and the method put back as it was (our wrapper, hooks and all), also when that code raises; run
    from the "replacement" phase, it runs under the "listen" hooks, in place of Triton's run."""
    ran = []

    def listen(call_, tuner, *args, **kwargs):
        ran.append("listen")
        return call_(tuner, *args, **kwargs)

    def theirs(self, *args, **kwargs):
        ran.append("theirs")
        self.best_config = self.configs[0]
        return self.fn.run(*args, **kwargs, **self.configs[0].all_kwargs())

    hooks.add("listen", "run", listen)
    ours = at.Autotuner.run

    def install():
        at.Autotuner.run = theirs

    def failing():
        at.Autotuner.run = theirs
        raise ImportError("no vllm here")

    taken = hooks.take("run", install)
    put_back = at.Autotuner.run is ours
    try:
        hooks.take("run", failing)
        raised = False
    except ImportError:
        raised = True
    nothing = hooks.take("run", lambda: None)
    hooks.add("replacement", "run", lambda call_, tuner, *args, **kwargs: taken(tuner, *args, **kwargs))
    call(300)
    return {"taken": taken is theirs, "put_back": put_back and at.Autotuner.run is ours, "raised": raised,
            "nothing": nothing is None, "ran": ran, "phases": list(hooks.phases("run")),
            "wrapped_once": wrapped_once()}


def compile_events():
    """compiles.listen and compiles.count at once, over a listener set before: each compile told to all three."""
    from autotune_cache.autotuner import compiles
    told, before = [], []
    triton.knobs.compilation.listener = lambda **kw: before.append(bool(kw.get("cache_hit")))
    counted = compiles.count()
    assert compiles.listen(told.append)
    call(300)
    return {"count": counted, "before": before, "names": sorted({e.name for e in told}),
            "hits": [e.cache_hit for e in told], "timed": all(e.seconds > 0 for e in told)}


print(json.dumps(globals()[scenario]()))
