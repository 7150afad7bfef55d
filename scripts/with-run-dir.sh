#!/usr/bin/env bash
# Run a command with VLLM_BUDGET_RUN_DIR set to a fresh folder, and on exit (success, failure
# or interruption) stop every vLLM process group the command recorded there and did not stop.
set -uo pipefail
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/vllm-budget-run.XXXXXX")
export VLLM_BUDGET_RUN_DIR=$run_dir
reap() {
    for pid_file in "$run_dir"/*.pid; do
        [ -e "$pid_file" ] || continue
        pid=$(cat "$pid_file")
        if kill -0 "$pid" 2>/dev/null; then
            echo "stopping leftover vLLM server (pid $pid)" >&2
            kill -TERM -- "-$pid" 2>/dev/null
            sleep 5
            kill -KILL -- "-$pid" 2>/dev/null
        fi
    done
    rm -rf "$run_dir"
}
trap reap EXIT
trap 'exit 130' INT TERM
"$@"
