#!/usr/bin/env bash
# Create .venv and install the project with its test extras. Used by the README's two commands and by CI.
# torch is installed first and pinned, so pip does not pull a multi-GB CUDA build on CPU machines that carry the CPU
# wheel locally; on a GPU machine choose the build with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

pip_install() {  # quiet pip that keeps its exit status but hides the local-index location warnings
    local log rc=0
    log=$(mktemp)
    .venv/bin/python -m pip install -q "$@" >"$log" 2>&1 || rc=$?
    grep -v "^WARNING: Location" "$log" || true
    rm -f "$log"
    return "$rc"
}

# shellcheck disable=SC2086
pip_install ${TORCH_SPEC:-torch==2.13.0}
pip_install -e ".[dev]"
.venv/bin/python -c "import torch, transformers, accelerate, datasets, hf_minitransformer; \
print(f'torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}, \
datasets {datasets.__version__}, hf_minitransformer {hf_minitransformer.__version__}')"
