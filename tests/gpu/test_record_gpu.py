"""On a CUDA GPU: scripts/gpu_record.py end to end for KDA (fla-core), Mamba2 SSD (vLLM sources) and GLA (an op
no code of this project names): record a real forward, build from the record with the CLI, and a fresh process with
other batches hits every lookup, benchmarks nothing and compiles nothing. Times are printed, never asserted."""
import json
import subprocess
import sys

import pytest
from helpers import TESTS

pytestmark = pytest.mark.gpu
SCRIPT = TESTS.parent / "scripts" / "gpu_record.py"


@pytest.mark.parametrize("family", ["kda", "mamba2", "gla", "gdn"])
def test_recorded_family_is_built_and_served_without_tuning(family, tmp_path):
    if family == "mamba2":
        pytest.importorskip("vllm")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--families", family, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "summary.json").read_text())
    (result,) = summary["families"]
    print(json.dumps(result, indent=1))
    assert result["ok"] and proc.returncode == 0, proc.stderr[-3000:]
