"""GPU names and their compute capability, as NVIDIA publishes them (developer.nvidia.com/cuda-gpus): the GPUs vLLM
users run. Pure: a name in, a `Gpu` (or None for a name not in the table) out.

Why a table: a machine fetched for by name (`fetch --gpu-name A100` on an image builder without the GPU) must be
filtered by its compute capability, or an sm_90 bundle would be installed for an sm_80 GPU; and a bundle built on
one GPU may serve another only when both are known to share a capability (H100 and H200: 9.0). A name not here
needs `--capability` and gets no other GPU's bundle.

A name matches an entry when its words, after the vendor words (NVIDIA, Tesla, GeForce) and '-'/'_' separators,
start with one of the entry's spellings: "NVIDIA A100-SXM4-80GB" -> A100, "NVIDIA GeForce RTX 4090" -> RTX4090,
"NVIDIA H100 80GB HBM3" -> H100, "gb200" -> GB200.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    """One GPU model. Example: Gpu(type="H200", capability="9.0"). `type` is the registry's GPU type (Ray's
    accelerator type where Ray has one: letters, digits, '-')."""
    type: str
    capability: str
    spellings: tuple[tuple[str, ...], ...] = ()


VENDOR_WORDS = {"nvidia", "tesla", "geforce"}   # in device names, before the model


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[\s_-]+", name.lower()) if w and w not in VENDOR_WORDS]


def _gpu(type_: str, capability: str, *spellings: str) -> Gpu:
    words = {tuple(_words(s)) for s in (type_, *spellings)}
    return Gpu(type_, capability, tuple(sorted(words, key=len, reverse=True)))


# NVIDIA's published compute capabilities. Longer spellings are tried first, so "RTX 6000 Ada" is not "RTX 6000".
TABLE: tuple[Gpu, ...] = (
    _gpu("V100", "7.0"), _gpu("T4", "7.5"),
    _gpu("A100", "8.0"), _gpu("A30", "8.0"), _gpu("A800", "8.0"),
    _gpu("A10", "8.6"), _gpu("A10G", "8.6"), _gpu("A40", "8.6"), _gpu("A16", "8.6"), _gpu("A2", "8.6"),
    _gpu("RTX3090", "8.6", "RTX 3090"), _gpu("RTX-A6000", "8.6", "RTX A6000"),
    _gpu("L4", "8.9"), _gpu("L40", "8.9"), _gpu("L40S", "8.9"), _gpu("L20", "8.9"),
    _gpu("RTX4090", "8.9", "RTX 4090"), _gpu("RTX6000-Ada", "8.9", "RTX 6000 Ada"),
    _gpu("H100", "9.0"), _gpu("H800", "9.0"), _gpu("H200", "9.0"), _gpu("H20", "9.0"), _gpu("GH200", "9.0"),
    _gpu("B200", "10.0"), _gpu("GB200", "10.0"), _gpu("B300", "10.3"), _gpu("GB300", "10.3"),
    _gpu("RTX5090", "12.0", "RTX 5090"), _gpu("RTX-PRO-6000", "12.0", "RTX PRO 6000"),
    _gpu("GB10", "12.1"),
)
def lookup(name: str | None) -> Gpu | None:
    """The table's entry for a GPU name (a device name or a type, any case), None for a name not in it."""
    if not name:
        return None
    words = tuple(_words(name))
    best: tuple[int, Gpu] | None = None
    for gpu in TABLE:
        for spelling in gpu.spellings:
            if words[:len(spelling)] == spelling and (best is None or len(spelling) > best[0]):
                best = (len(spelling), gpu)
    return best[1] if best else None


def known_types() -> str:
    """The table's GPU types, for a message: "V100, T4, A100, ..."."""
    return ", ".join(g.type for g in TABLE)
