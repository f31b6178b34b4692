"""`python autotuner_scenarios.py SCENARIO CACHE_DIR`: one scenario of test_autotuner.py, run on the fake GPU with
real Triton in a process of its own (the room patches Triton's Autotuner for the whole process). Prints JSON."""
import json
import os
import sys
import threading

scenario, cache_dir = sys.argv[1], sys.argv[2]
os.environ["TRITON_CACHE_DIR"] = cache_dir
os.environ["TRITON_CACHE_AUTOTUNING"] = "1"
from autotune_cache.builder import emulation  # noqa: E402

emulation.install()
import triton.runtime.autotuner as at  # noqa: E402

from autotune_cache.autotuner import disk, hooks  # noqa: E402
from autotune_cache.models import preset  # noqa: E402

TRITONS = {m: getattr(at.Autotuner, m) for m in hooks.METHODS if m != "_bench"}   # _bench: emulation's already
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
        emulation.install()
        selection.install(selection.Settings())
        precompile.install(2)
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


print(json.dumps(globals()[scenario]()))
