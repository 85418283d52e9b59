#!/usr/bin/env bash
# GPU confirmation: a long linear-regime RL trajectory of a ~47M-parameter model of the tiny
# family, its analysis and its extrapolation, within 10 minutes on one GPU, into one results JSON
# (bench/results/gpu_confirm.json). Written for a single-GPU machine with no network that has torch, transformers,
# accelerate, peft, safetensors, numba and matplotlib, and receives at most 64 MiB of files: this script, src/ and
# any wheels in bench/wheels/ (never committed). See bench/gpu_confirm.py and docs/smollm2.md.
#
#   bench/gpu_confirm.sh --download-wheels   # beforehand, on a machine with network: wheels into bench/wheels/
#   bench/gpu_confirm.sh                     # on the GPU machine
#   bench/gpu_confirm.sh --dry-run           # anywhere: CPU, pico sizes, a few steps (GPU_CONFIRM_DRY=1 too)
#
# Wheels: only what fits. scipy (35 MB) is the one a run may use (t-quantiles; otherwise stubbed). TRL's path needs
# trl + datasets + pyarrow + pandas + ... = 101 MB with scipy (measured), over the 64 MiB limit, so by default the run
# uses the bare GRPO step (rlvr_linear.training.grpo_step). GPU_CONFIRM_WHEELS="trl datasets ..." overrides the list.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
WHEELS="${GPU_CONFIRM_WHEEL_DIR:-$HERE/wheels}"
PY="${PYTHON:-python3}"

if [[ "${1:-}" == "--download-wheels" ]]; then
    mkdir -p "$WHEELS"
    # --no-deps: torch and the rest are already on the GPU machine; pulling dependencies would fetch a CUDA torch
    # shellcheck disable=SC2086
    # the GPU machine's Python (default: this one's); GPU_CONFIRM_PYTHON_VERSION=3.12 for another
    pyver="${GPU_CONFIRM_PYTHON_VERSION:-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}"
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$pyver" -d "$WHEELS" ${GPU_CONFIRM_WHEELS:-scipy}
    du -ch "$WHEELS"/*.whl | tail -1
    exit 0
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
if [[ -d "$WHEELS" ]] && compgen -G "$WHEELS/*.whl" > /dev/null; then
    # offline install of what was brought along; a wheel that cannot install is reported, not fatal
    "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl \
        || echo "gpu_confirm.sh: some wheels in $WHEELS did not install; continuing" >&2
fi
"$PY" - <<'PY'
import importlib.util, torch
print("gpu_confirm.sh: torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "| trl", bool(importlib.util.find_spec("trl")), "| datasets", bool(importlib.util.find_spec("datasets")),
      "| scipy", bool(importlib.util.find_spec("scipy")))
PY
cd "$ROOT"
exec "$PY" "$HERE/gpu_confirm.py" "$@"
