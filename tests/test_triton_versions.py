"""Which Tritons the tool runs on (autotuner/versions.py), on the Triton installed for the run: CI runs this file on
3.6 (the suite), 3.7, 3.8 and 3.9 (supported: a newer version is a warning) and on 3.5.1 (refused: one line from
install(), build, verify and ensure, nothing created, Triton left as it is)."""
import json
import subprocess
import sys

import pytest
from helpers import TESTS, run_cli
from packaging.version import Version

from autotune_cache.autotuner import versions


@pytest.mark.parametrize("version, verdict", [
    ("3.4.0", "refused"), ("3.5.1", "refused"), ("2.3.1", "refused"), (None, "refused"),
    ("3.6.0", "ok"), ("3.7.1", "ok"), ("3.8.0", "ok"), ("3.9.0", "ok"), ("3.9.0+git1a2b3c", "ok"),
    ("3.10.0", "newer"), ("3.10.0.dev20270101", "newer"), ("4.0.0", "newer"), ("banana", "newer"),
])
def test_each_version_has_one_verdict(version, verdict):
    s = versions.support_of(version)
    assert (s.refusal is not None, s.warning is not None) == {"refused": (True, False), "ok": (False, False),
                                                              "newer": (False, True)}[verdict]
    for line in filter(None, (s.refusal, s.warning)):
        assert "\n" not in line and ("3.6 to 3.9" in line or version is None)
    if version in ("3.4.0", "3.5.1"):   # says what breaks there, not only that it is old
        assert versions.BELOW_FLOOR[Version(version).release[:2]] in s.refusal


def test_the_floor_is_pyprojects():
    import tomllib
    deps = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"triton>={versions.FLOOR[0]}.{versions.FLOOR[1]}" in deps


_INSTALL = """
import json, sys
from autotune_cache.autotuner import versions
if len(sys.argv) > 2:
    versions.installed = lambda: sys.argv[2]
import autotune_cache, triton.runtime.autotuner as at
strict = len(sys.argv) > 3
try:
    r = autotune_cache.install(sys.argv[1], strict=strict)
except autotune_cache.AutotuneCacheError as e:
    print(json.dumps({"raised": type(e).__name__, "message": str(e)})); sys.exit(0)
hooked = hasattr(at.Autotuner.__init__, "__wrapped__")
print(json.dumps({"refused": r.refused, "warnings": r.warnings, "hooked": hooked}))
"""


def _install(cache, *version_and_strict):
    proc = subprocess.run([sys.executable, "-c", _INSTALL, str(cache), *version_and_strict], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


supported_here = pytest.mark.skipif(not versions.support().ok, reason="the Triton of this run is refused")
refused_here = pytest.mark.skipif(versions.support().ok, reason="the Triton of this run is supported (the 3.5 leg)")


@supported_here
def test_a_newer_triton_is_served_with_one_warning(tmp_path):
    out, err = _install(tmp_path, "3.10.0")
    assert out["refused"] == [] and out["hooked"]
    assert [w for w in out["warnings"] if "3.10.0" in w] == [versions.support_of("3.10.0").warning]
    assert err.count("3.10.0") == 1   # logged once


@supported_here
def test_this_triton_is_served_without_a_word(tmp_path):
    out, err = _install(tmp_path)
    assert out["refused"] == [] and out["hooked"] and "Triton" not in err + "".join(out["warnings"])


@refused_here
def test_an_unsupported_triton_is_one_line_and_left_as_it_is(tmp_path):
    line = versions.support().refusal
    out, err = _install(tmp_path)
    assert out == {"refused": [line], "warnings": [], "hooked": False}   # non-strict: reports, never raises
    assert [x for x in err.splitlines() if x.strip()] == [f"autotune-cache: {line}; {tmp_path} is not used and "
                                                         "Triton is left as it is"]
    out, _ = _install(tmp_path, versions.support().version, "strict")
    assert out == {"raised": "UnsupportedTritonError", "message": f"autotune-cache strict mode: {line}"}


@refused_here
def test_build_ensure_and_verify_refuse_an_unsupported_triton_in_one_line(tmp_path):
    line = versions.support().refusal
    model = ("--target", "toy_target", "--model", "qwen3.5-9b", "--tp", "1", "--max-tokens", "1024")
    for args in (("build", "--emulate", "-q", *model, "--cache-dir", tmp_path / "new" / "c"),
                 ("ensure", *model, "--cache-dir", tmp_path / "new" / "c")):
        proc = run_cli(*args, env={"PYTHONPATH": f"{TESTS}:{__import__('os').environ.get('PYTHONPATH', '')}"})
        assert proc.returncode == 2 and proc.stderr == f"autotune-cache: error: {line}\n", proc.stderr
        assert not (tmp_path / "new").exists()   # nothing created
    proc = run_cli("verify", tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"compatibility: FAIL\n  problem: {line}\n" in proc.stdout
