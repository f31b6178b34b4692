"""The build GPU as the kernels see it, read through the CUDA driver API without a context.

Compile workers run on a fake GPU (emulation.py) so that they never create a CUDA context, launch nothing and
leave the GPU to the benchmarking child. For their kernels to be the ones the child looks up, the fake must be this
GPU: its compute capability (the compile target) and what the kernel modules read at import time (name, shared
memory, SM count: FLA picks config lists from them). cuInit and cuDeviceGet* create no context, so reading them in
the build child before torch starts changes nothing there.
"""
from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Profile:
    """Example: Profile(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multiprocessor_count=132, ...)."""
    name: str
    major: int
    minor: int
    multiprocessor_count: int
    max_shared_mem: int         # bytes per block, opt-in (what Triton and FLA compare configs against)
    max_num_regs: int           # registers per block
    warp_size: int
    sm_clock_rate: int          # kHz
    mem_clock_rate: int         # kHz
    mem_bus_width: int          # bits
    total_memory: int           # bytes
    shared_memory_per_block: int = 49152

    def triton_properties(self) -> dict:
        """What Triton's `driver.active.utils.get_device_properties(device)` returns for this GPU."""
        return dict(max_shared_mem=self.max_shared_mem, max_num_regs=self.max_num_regs,
                    multiprocessor_count=self.multiprocessor_count, warpSize=self.warp_size,
                    sm_clock_rate=self.sm_clock_rate, mem_clock_rate=self.mem_clock_rate,
                    mem_bus_width=self.mem_bus_width)

    def to_dict(self) -> dict:
        return asdict(self)


H100 = Profile(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multiprocessor_count=132, max_shared_mem=232448,
               max_num_regs=65536, warp_size=32, sm_clock_rate=1980000, mem_clock_rate=2619000, mem_bus_width=5120,
               total_memory=80 << 30)

# CUdevice_attribute values (cuda.h); the ones Triton's get_device_properties reads, plus the capability
_ATTRIBUTES = dict(max_num_regs=12, warp_size=10, sm_clock_rate=13, multiprocessor_count=16, mem_clock_rate=36,
                   mem_bus_width=37, major=75, minor=76, max_shared_mem=97, shared_memory_per_block=8)


def read(ordinal: int = 0) -> Profile | None:
    """The profile of CUDA device `ordinal` (of those CUDA_VISIBLE_DEVICES shows), None where there is no NVIDIA
    driver or no such device. Never creates a context."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev = ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
        return None
    values = {}
    for field, attribute in _ATTRIBUTES.items():
        value = ctypes.c_int()
        if cuda.cuDeviceGetAttribute(ctypes.byref(value), attribute, dev) != 0:
            return None
        values[field] = value.value
    name = ctypes.create_string_buffer(256)
    total = ctypes.c_size_t()
    if cuda.cuDeviceGetName(name, 256, dev) != 0 or cuda.cuDeviceTotalMem_v2(ctypes.byref(total), dev) != 0:
        return None
    return Profile(name=name.value.decode(errors="replace"), total_memory=total.value, **values)
