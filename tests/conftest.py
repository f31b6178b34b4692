import os
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # toy_target, importable by spawned children too (they inherit sys.path)
# tests/boot first: its sitecustomize adds the fault injection (tests/faults.py) to every build child's unit hooks
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS / "boot"), str(TESTS),
                                                         os.environ.get("PYTHONPATH")]))
# The CPU tests' caches are built emulated (fake timings), which `verify` and `ensure` refuse unless allowed;
# tests/test_cli_ux.py checks that refusal with this unset.
os.environ.setdefault("AUTOTUNE_CACHE_ALLOW_EMULATED", "1")
# The CLI fits its output to COLUMNS when set (a shell may export it): the tests read piped, full-width output
# unless they set a width themselves (test_cli_ux.py: COLUMNS=80).
# GNU readline, once imported (pytest's debugger support imports it), exports LINES and COLUMNS into the C
# environment, which subprocesses inherit though os.environ never shows them: start it first, then unset both.
try:
    __import__("readline")
except ImportError:
    pass
for _var in ("COLUMNS", "LINES"):
    os.environ.pop(_var, None)
    os.unsetenv(_var)
# A shell without job control starts a background job (`pytest ... &`) with SIGINT ignored, and children inherit
# that: the Ctrl-C tests would then signal a CLI that cannot hear it. A Python handler is reset to the default in a
# child, so the CLIs the tests start get Python's KeyboardInterrupt as a terminal's would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser):
    parser.addoption("--deep", action="store_true",
                     help="the deep run: property tests at full example counts, and the tests marked deep")


def pytest_configure(config):
    import helpers
    helpers.DEEP = config.getoption("--deep")
    if hasattr(config.option, "loadscopereorder"):
        # pytest-xdist >= 3.6 hands out the files with the most tests first unless told not to: the few-test files
        # with the long compile fixtures (LONGEST_FIRST) then start last and run alone at the end
        config.option.loadscopereorder = False
    if not hasattr(config, "workerinput") and getattr(config.option, "testrunuid", "") is None:
        # the controller hands its workers this run's id (PYTEST_XDIST_TESTRUNUID): one TOY_STORE for all of them,
        # the one pytest_sessionfinish removes (xdist's own random id left every run's store behind, ~50 MB)
        config.option.testrunuid = _RUN
    try:
        from hypothesis import settings
    except ImportError:
        return
    # The default run draws the same examples every time (a failure there is the code's, reproducible, never a
    # new draw's luck); the deep run draws new ones each time. Set before any test module builds its settings.
    settings.register_profile("default-run", derandomize=True)
    settings.register_profile("deep", derandomize=False)
    settings.load_profile("deep" if helpers.DEEP else "default-run")


# The longest test files (docs/testing.md, from --durations), started first: with --dist loadfile pytest-xdist hands
# out whole files in collection order (reordering off: pytest_configure), so a long file collected last would run
# alone at the end while the other core idles.
LONGEST_FIRST = ("test_vllm_keys", "test_fla_keys", "test_faults", "test_record_gdn", "test_bench_scripts",
                 "test_shard_build", "test_sglang_keys", "test_selection", "test_targets_engines", "test_sglang_build",
                 "test_precompile", "test_registry", "test_integrity", "test_loader")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))   # stable: the rest keep their order
    if not config.getoption("--deep"):
        shallow = pytest.mark.skip(reason="deep run only (pytest --deep; docs/testing.md)")
        for item in items:   # the marker, not item.keywords: a parameter id "deep" is a keyword too
            if item.get_closest_marker("deep"):
                item.add_marker(shallow)
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


# -- built toy caches, shared by the whole run ---------------------------------------------------------------------
# A toy build is a real build child (torch, Triton and the toy kernels compiled for the fake GPU): several modules
# need the same caches, so each distinct spec is built once per run, into a store every pytest-xdist worker of
# the run shares (one builds under a file lock, the others wait), and each module gets a relocated copy of its own
# to change as it likes. World-readable: test_loader serves a copy as another user.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex
TOY_STORE = Path(tempfile.gettempdir()) / f"autotune-cache-tests-{_RUN}"


class ToyCaches:
    def copy(self, dest, **spec):
        """A relocated copy at `dest` of the toy build of helpers.toy_spec(**spec), built once per run."""
        from helpers import toy_build
        name = "-".join(f"{k}={spec[k]}" for k in sorted(spec)).replace("/", "_").replace(" ", "") or "default"
        return self.built(name, lambda master: toy_build(master, **spec), dest)

    def fla(self, dest):
        """A relocated copy at `dest` of the real FLA build the FLA key tests check (helpers.fla_host_keys_build):
        test_fla_keys, test_record_gdn and the winners script all serve it; its compiles are a minute of 2 cores."""
        from helpers import fla_host_keys_build
        return self.built("fla-host-keys", fla_host_keys_build, dest)

    @staticmethod
    def built(name, make, dest):
        """`make(master)` once per run under a lock shared by every xdist worker, then a relocated copy at `dest`."""
        from filelock import FileLock
        from helpers import relocated_copy
        TOY_STORE.mkdir(mode=0o755, exist_ok=True)
        master = TOY_STORE / name / "cache"
        with FileLock(str(TOY_STORE / f"{name}.lock")):
            if not (master.parent / "done").exists():
                shutil.rmtree(master.parent, ignore_errors=True)
                master.parent.mkdir(mode=0o755)
                make(master)
                (master.parent / "done").write_text(name)
        return relocated_copy(master, dest)


@pytest.fixture(scope="session")
def toy_caches():
    return ToyCaches()


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):   # the controller (or a run without xdist), after every worker
        shutil.rmtree(TOY_STORE, ignore_errors=True)
