#!/bin/sh
# Init-container / pre-serving hook: make sure the GDN autotune cache covers the model, then exec the server.
#   AUTOTUNE_CACHE_DIR      the cache (required)
#   AUTOTUNE_CACHE_MODEL    preset name; or AUTOTUNE_CACHE_CONFIG, a local config.json / snapshot dir
#   AUTOTUNE_CACHE_TP, AUTOTUNE_CACHE_TARGET, AUTOTUNE_CACHE_MAX_TOKENS   (defaults 1, fla, 16384)
#   AUTOTUNE_CACHE_ENSURE=0 skips the check (the server still reads the cache through the plugin / install()).
#   Every variable (and which process reads it): docs/settings.md.
# `autotune-cache ensure` builds only what is missing (needs a GPU and a writable dir) and otherwise only reads,
# so this works on a read-only image layer. Exit codes are ensure's: 1 the server would miss, 2 bad input / no GPU.
set -eu

: "${AUTOTUNE_CACHE_DIR:?set AUTOTUNE_CACHE_DIR to the cache directory}"
if [ "${AUTOTUNE_CACHE_ENSURE:-1}" != "0" ]; then
    if [ -n "${AUTOTUNE_CACHE_CONFIG:-}" ]; then
        set -- --config "$AUTOTUNE_CACHE_CONFIG" -- "$@"
    else
        set -- --model "${AUTOTUNE_CACHE_MODEL:-qwen3.5-9b}" -- "$@"
    fi
    model_flag=$1
    model_value=$2
    shift 3
    autotune-cache ensure "$model_flag" "$model_value" --tp "${AUTOTUNE_CACHE_TP:-1}" \
        --target "${AUTOTUNE_CACHE_TARGET:-fla}" --max-tokens "${AUTOTUNE_CACHE_MAX_TOKENS:-16384}" \
        --cache-dir "$AUTOTUNE_CACHE_DIR" --no-progress
fi
if [ "$#" -eq 0 ]; then
    echo "autotune-cache-entrypoint: cache ready in $AUTOTUNE_CACHE_DIR; no server command given" >&2
    exit 0
fi
exec "$@"
