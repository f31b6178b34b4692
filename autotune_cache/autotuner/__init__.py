"""Triton's runtime, as this tool touches it: the one room that imports `triton.runtime`, `triton.compiler`,
`triton.knobs` (tests/test_triton_seam.py checks that no other module does, nor any script of scripts/, nor
assigns into `triton.*`: the benchmark scripts hook Triton through this room too).

- `hooks`: the one wrapper per patched `Autotuner` method (`__init__`, `run`, `prune_configs`,
  `check_disk_cache`, `_bench`), installed once per process under one lock, and `PHASES`: the one order in which
  every room's hooks run, whatever order they were added in (the last, "replacement", for a script's stand-in for
  Triton's method); `take`: another's replacement of a method (vLLM's force_first_config) taken back out of Triton,
  for a hook to call.
- `disk`: every autotune disk lookup as it happens (`Lookup`, `Launch`, listeners, miss and bench hooks, `dry`),
  Triton's cache manager watched per thread; `reading`: one thread's lookups read another cache manager's dir; and
  a key whose configs pruned to one, which Triton 3.8+ looks up nowhere (`PrunedToOne`, `skips_lookup`).
- `kernels`: Triton's kernel objects (an Autotuner's JITFunction and heuristics, the live Autotuners, a compiled
  kernel's dirs); `keys`: the tuning key of a call and the parts of every disk key (`triton_key`, backend hash,
  cache-invalidating env vars); `timing`: how an Autotuner times one config, and which errors make a config one
  that cannot run; `compiles`: compiling on threads, and each compile as it happens (`listen`, `count`);
  `emulated`: another host's disk-key parts, for emulated builds; `versions`: the Tritons this tool supports and
  tests, the one line for any other, and what differs between them that other rooms act on, one named function per
  change (`prunes_to_one_skip_disk`, `group_needs_every_member`): no room reads Triton's version number itself.

Public extension points used where Triton has one: `knobs.compilation.listener` (compiles.listen),
`TRITON_CACHE_MANAGER` (serve/layered.py), an Autotuner's `do_bench` and `cache_results` attributes, `knobs.runtime`.
Private ones remain where Triton (3.4-3.9) has none; each says why where it is used. Imports nothing of this
package above it: cache/ (fingerprint) reads the disk-key parts here.
"""
