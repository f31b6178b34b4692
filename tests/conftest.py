import os
import signal
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # toy_target, importable by spawned children too (they inherit sys.path)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
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


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
