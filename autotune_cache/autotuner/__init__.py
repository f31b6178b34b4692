"""Triton's runtime, as this tool touches it: the one room that imports `triton.runtime`, `triton.compiler`,
`triton.knobs` (tests/test_triton_seam.py checks that no other module does, nor assigns into `triton.*`).

- `hooks`: the one wrapper per patched `Autotuner` method (`__init__`, `run`, `prune_configs`,
  `check_disk_cache`, `_bench`), installed once per process under one lock, and `PHASES`: the one order in which
  every room's hooks run, whatever order they were added in.
- `disk`: every autotune disk lookup as it happens (`Lookup`, `Launch`, listeners, miss and bench hooks, `dry`),
  Triton's cache manager watched per thread; and a key whose configs pruned to one, which Triton 3.8+ looks up
  nowhere (`PrunedToOne`, `skips_lookup`).
- `versions`: what differs between the Triton versions (3.6-3.9) that other rooms act on, one named function per
  change (`prunes_to_one_skip_disk`, `group_needs_every_member`): no room reads Triton's version number itself.
- `kernels`: Triton's kernel objects (an Autotuner's JITFunction and heuristics, the live Autotuners, a compiled
  kernel's dirs); `keys`: the tuning key of a call and the parts of every disk key (`triton_key`, backend hash,
  cache-invalidating env vars); `timing`: how an Autotuner times one config; `compiles`: compiling on threads
  and counting compiles; `emulated`: another host's disk-key parts, for emulated builds.

Public extension points used where Triton has one: `knobs.compilation.listener` (compiles.count),
`TRITON_CACHE_MANAGER` (serve/layered.py), an Autotuner's `do_bench` and `cache_results` attributes, `knobs.runtime`.
Private ones remain where Triton (3.4-3.9) has none; each says why where it is used. Imports nothing of this
package above it: cache/ (fingerprint) reads the disk-key parts here.
"""
