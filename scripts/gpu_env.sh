#!/usr/bin/env bash
# Sourced on the GPU host (repo root): installs the carried wheels (.whl/: fla-core, pydantic, multiprocess,
# fsspec; .engines/: /work/shared/engines-py312 copied, for vLLM's and SGLang's Python sources) into a temp site and
# sets PYTHONPATH. ENGINE=vllm|sglang|none picks which engine's sources join the path (one at a time: both ship a
# top-level package of kernels, and SGLang imports vLLM only where it is installed). Sets SITE, VSRC, SSRC.
SITE=$(mktemp -d); VSRC=$(mktemp -d); SSRC=$(mktemp -d)
wheels=(.whl/*.whl)
[ -d .engines ] && wheels+=(.engines/*.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
    2>&1 | grep -v "WARNING: Target directory" || true
if [ -d .engines ]; then
    tar -xzf .engines/vllm-0.33.0-py-sources.tgz -C "$VSRC"
    tar -xzf .engines/sglang-0.5.23-py-sources.tgz -C "$SSRC"
fi
case "${ENGINE:-vllm}" in
    vllm) export PYTHONPATH="$SITE:$PWD:$PWD/tests:$VSRC" ;;
    sglang) export PYTHONPATH="$SITE:$PWD:$PWD/tests:$SSRC" ;;
    *) export PYTHONPATH="$SITE:$PWD:$PWD/tests" ;;
esac
export SITE VSRC SSRC PYTHONUNBUFFERED=1
