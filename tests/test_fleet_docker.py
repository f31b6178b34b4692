"""docker/Dockerfile.fetch: the GPU-less image path parses, asks for no GPU, and calls our CLI correctly (fetch for a
named GPU type, then verify); the cache lands at the same absolute path in both stages."""
import shlex

import pytest
from test_docker import ROOT, stages

from autotune_cache.cli import parser

DOCKERFILE = ROOT / "docker" / "Dockerfile.fetch"


def test_fetch_stage_needs_no_gpu_and_keeps_the_cache_path():
    _, (fetch, serve) = stages(DOCKERFILE)
    assert fetch["from"] == "${BASE} AS fetch" and serve["from"] == "${BASE} AS serve"   # same Triton/ptxas/Python
    assert not any("--device" in v for _, v in fetch["ins"] + serve["ins"])
    copies = [v for i, v in serve["ins"] if i == "COPY" and "--from=fetch /opt/gdn-cache" in v]
    assert copies == ["--from=fetch /opt/gdn-cache /opt/gdn-cache"]
    assert "AUTOTUNE_CACHE_DIR=/opt/gdn-cache" in " ".join(v for i, v in serve["ins"] if i == "ENV")


@pytest.mark.parametrize("capability", ["", "10.0"])
def test_fetch_stage_cli_calls_parse(capability):
    _, (fetch, _) = stages(DOCKERFILE)
    run = next(v for i, v in fetch["ins"] if i == "RUN" and "autotune-cache fetch" in v)
    # the shell's ${CAPABILITY:+...}: the flag only when the build arg is given (a GPU outside the GPU table)
    optional = '${CAPABILITY:+--capability "${CAPABILITY}"}'
    assert optional in run
    run = run.replace(optional, f'--capability "{capability}"' if capability else "")
    values = {"REGISTRY": "s3://bucket/gdn", "GPU_NAME": "H200", "MODEL": "qwen3.5-9b", "TP": "1", "TARGET": "fla",
              "MAX_TOKENS": "16384", "AUTOTUNE_CACHE_DIR": "/opt/gdn-cache", "PUBLIC_KEY": ""}
    for name, value in values.items():
        run = run.replace(f"${{{name}}}", value)
    commands = [shlex.split(c) for c in run.split("&&")]
    commands = [argv[argv.index("autotune-cache") + 1:] for argv in commands]
    assert [argv[0] for argv in commands] == ["fetch", "verify"]
    args = parser().parse_args(commands[0])
    assert args.gpu_name == "H200" and args.url == "s3://bucket/gdn" and args.dir == "/opt/gdn-cache"
    assert args.capability == (capability or None)
    parser().parse_args(commands[1])
