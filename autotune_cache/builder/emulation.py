"""A fake GPU (by default an H100, sm_90) for machines without one (FACTS.md §2), and for compile workers.

Triton compiles every config for real (the ptxas of the Triton wheel) and its real disk cache code reads and
writes real autotune JSON and binaries; launches do nothing and benchmarks return fake timings. This is how
CPU tests prove that the keys we build are the keys a server looks up, and how a plan can be checked against
real kernels without a GPU. Must be installed before the kernel modules are imported: FLA picks its config
lists from the device it sees at import time.

The fake GPU is a Triton driver, selected with Triton's own `driver.set_active` (its backend extension point), plus
fakes of torch's device queries: those stay here. What touches the autotuner (the config being timed, another
host's disk-key parts) is hooked or replaced through autotuner/.
"""
from __future__ import annotations

import json
import os
import types

from .. import settings
from ..autotuner import hooks
from .device import H100, Profile

# Read by tests: how many configs the fake benchmarker ran in this process.
bench_calls = 0
# Tests that need chosen timings: AUTOTUNE_CACHE_FAKE_TIMES = JSON {str(config): [ms, ms, ...]}; each timing of
# that config takes the next value (the last one repeats). Configs not named get the default fake timing. A name
# "<config> @ <arg>=<value>" applies only to calls whose argument <arg> is <value> (a token-dependent size): the
# same config can then be fast at one token count and slow at another.
FAKE_TIMES_ENV = "AUTOTUNE_CACHE_FAKE_TIMES"
_benchmarking: list = []   # the config Autotuner._bench is timing (set by the hook install() adds)
_served: dict[str, int] = {}


def _fake_timing(kernel_call) -> float:
    # Deterministic per config, so a rebuild picks the same winner; the value is meaningless.
    global bench_calls
    kernel_call()
    bench_calls += 1
    times = settings.current().fake_times
    name = None
    if _benchmarking:
        config, nargs = _benchmarking[-1]
        name = str(config)
        named = [f"{name} @ {arg}={value}" for arg, value in nargs.items() if isinstance(value, (int, str))]
        name = next((n for n in named if n in times), name)
    if name is not None and name in times:
        i = _served.get(name, 0)
        _served[name] = i + 1
        return float(times[name][min(i, len(times[name]) - 1)])
    return float(bench_calls % 7 + 1)


def _track_config(bench, tuner, *args, config, **meta):
    """Around Autotuner._bench: the config being timed, for _fake_timing."""
    _benchmarking.append((config, tuner.nargs or {}))
    try:
        return bench(tuner, *args, config=config, **meta)
    finally:
        _benchmarking.pop()


class _NoDevice:
    def __init__(self, device=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def fake_gpu(device_keys: str | None = None, profile: Profile | None = None) -> None:
    """Make Triton and torch believe a GPU is present: an H100, or `profile` (device.py; the compile workers of a
    real build take the build GPU's). `device_keys`: a JSON file with another host's `triton_key` and
    `backend_hash`, to predict that host's exact disk keys."""
    gpu = profile or H100
    # vLLM swaps triton for a placeholder when it sees no GPU driver; with none visible it keeps the real one
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    class Utils:
        def get_device_properties(self, device):
            return gpu.triton_properties()

        def load_binary(self, name, kernel, shared, device):
            return (0, 0, 32, 0, 1024)  # module, function, n_regs, n_spills, n_max_threads

    class NoopLauncher:
        def __init__(self, src, metadata):
            pass

        def __call__(self, *args, **kwargs):
            return None

    def bench(kernel_call, quantiles=None, **kwargs):
        t = _fake_timing(kernel_call)
        return [t, t, t] if quantiles else t

    class FakeDriver:
        utils = Utils()
        launcher_cls = NoopLauncher

        def get_current_target(self):
            return GPUTarget("cuda", gpu.major * 10 + gpu.minor, gpu.warp_size)

        def get_current_device(self):
            return 0

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

        def get_benchmarker(self):
            return bench

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_empty_cache_for_benchmark(self):
            return torch.empty(16, dtype=torch.int8)

        def clear_cache(self, cache):
            pass

        def map_python_to_cpp_type(self, ty):
            return ty

        def is_active(self):
            return True

    driver.set_active(FakeDriver())
    hooks.add("emulation", "_bench", _track_config)
    torch.cuda.get_device_capability = lambda *a, **k: (gpu.major, gpu.minor)
    torch.cuda.get_device_name = lambda *a, **k: gpu.name
    torch.cuda.device_count = lambda: 1
    torch.cuda.is_available = lambda: True
    torch.cuda.current_device = lambda: 0
    # Device guards (SGLang's input_guard) on CPU tensors: nothing to switch. torch's stubs allow neither a stand-in
    # class for torch.cuda.device nor a duck-typed properties object: both are fakes on purpose.
    torch.cuda.device = _NoDevice   # type: ignore[misc, assignment]  # a stand-in class, on purpose
    torch.cuda.get_device_properties = lambda *a, **k: types.SimpleNamespace(  # type: ignore[assignment]  # a fake
        name=gpu.name, major=gpu.major, minor=gpu.minor, multi_processor_count=gpu.multiprocessor_count,
        shared_memory_per_block=gpu.shared_memory_per_block, shared_memory_per_block_optin=gpu.max_shared_mem,
        total_memory=gpu.total_memory, warp_size=gpu.warp_size)
    keys_file = device_keys or settings.current().device_keys
    if keys_file:
        from ..autotuner import emulated
        emulated.use_device_keys(json.loads(open(keys_file).read()))
