#!/usr/bin/env bash
# Run a command, show its output, and record how it went in benchmarks/results/NAME.txt (the
# figures docs/contributing.md quotes): date, machine, exit status, wall seconds and pytest's
# closing line. The command's exit status is this script's.
#   scripts/record.sh make-test make test-steps
set -uo pipefail
cd "$(dirname "$0")/.."
name=$1
shift
log=$(mktemp "${TMPDIR:-/tmp}/vllm-budget-$name.XXXXXX.log")
start=$SECONDS
"$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
mkdir -p benchmarks/results
{
    echo "command: ${name/-/ }"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "fresh venv: $([ -n "$(grep -l 'Setting up' "$log" 2>/dev/null)" ] && echo yes || echo no)"
    echo "exit status: $rc"
    echo "wall seconds: $((SECONDS - start))"
    summary=$(grep -E '^=+ .*[0-9]+ (passed|failed|error).* in [0-9.]+s' "$log" | tail -n 1 | tr -d '=' | xargs)
    [ -z "$summary" ] || echo "pytest: $summary"
} >"benchmarks/results/$name.txt"
rm -f "$log"
exit "$rc"
