import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def run_cli(*args, env=None, check=None):
    """autotune-cache in a subprocess: what a user sees (stdout, stderr, exit code)."""
    proc = subprocess.run([sys.executable, "-m", "autotune_cache", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)
    if check is not None:
        assert proc.returncode == check, proc.stderr + proc.stdout
    return proc


def stand_in(cache_dir, *args, env=None):
    """A fresh 'serving' process against cache_dir; returns its lookup report."""
    proc = subprocess.run([sys.executable, "-m", "autotune_cache.serve.stand_in", "--cache-dir", str(cache_dir), "--json",
                           *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compiles(cache_dir, *args, env=None):
    """stand_in() that also counts Triton compiles and cache loads in the fresh process (count_compiles.py)."""
    proc = subprocess.run([sys.executable, str(TESTS / "count_compiles.py"), "--cache-dir", str(cache_dir),
                           *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_each_spec_reached_its_plan(manifest, specs, configs: int) -> None:
    """Each spec's one unit reached exactly the (kernel, key) pairs its plan predicted, benchmarking `configs`."""
    from autotune_cache import plan
    for spec in specs:
        (unit,) = plan(spec).units
        reached, planned = reached_and_planned(manifest, unit)
        assert reached == planned
        assert configs_reached(manifest, unit) == configs


def reached_and_planned(manifest, unit):
    """(kernel, key) pairs a unit reached in a build, and those its plan predicted, both sorted."""
    entries = [manifest.entries[f] for f in manifest.units[unit.id].entries]
    return (sorted((e.kernel, tuple(e.key)) for e in entries),
            sorted((k.kernel, tuple(k.key)) for k in unit.keys))


def assert_only_entries_on_disk(cache, manifest):
    """The autotune files on disk are exactly the manifest's entries (a dry probe pass leaves none of its own)."""
    from pathlib import Path
    on_disk = sorted(p.relative_to(cache).as_posix() for p in Path(cache).rglob("*.autotune.json"))
    assert on_disk == sorted(manifest.entries)


def assert_probed(cache, manifest, unit, tokens=512):
    """The unit's keys were also timed in a dry probe pass at `tokens`, and that pass left no autotune file."""
    assert_only_entries_on_disk(cache, manifest)
    for f in manifest.units[unit.id].entries:
        sel = manifest.entries[f].selection
        assert sel["probe_tokens"] == [tokens] and all(c["probes"][0]["tokens"] == tokens for c in sel["candidates"])


def configs_reached(manifest, unit) -> int:
    return sum(manifest.entries[f].configs for f in manifest.units[unit.id].entries)


def run_cli_bounded(*args, timeout=60, memory=2 << 30):
    """run_cli() that can neither hang nor exhaust the machine: killed after `timeout` seconds (TimeoutExpired fails
    the test), its address space capped at `memory` bytes (past it MemoryError: a traceback and exit 1)."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    return subprocess.run([sys.executable, "-m", "autotune_cache", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap)
