"""Each round of the tool-output ranking, measured on every labelled set.

``python -m benchmarks.tool_output_rounds`` (needs the git history: a full clone). For each
round in :data:`ROUNDS`, the package as it was at that round's commit (checked out with ``git
worktree`` into a temporary folder) summarizes the outputs of every set of
:mod:`benchmarks.tool_output_retention`, with this checkout's data and benchmark code, so all
rounds are scored on the same sets, including sets written after the round. These are the
figures of the table in ``docs/compaction.md`` ("Measured"); each held-out set measured one
round blind, the one before the round that was tuned on it.

Results: ``benchmarks/results/tool_outputs/rounds.json`` and ``rounds.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["ROUNDS", "main", "run_rounds"]

ROUNDS: dict[str, str] = {
    "round 1": "a95625d",
    "round 2": "e308f2c",
    "round 3": "97af269",
    "now": "HEAD",
}
"""``{round: commit}``: the last commit of each round of ranking changes, and the checkout."""

_ROOT = Path(__file__).resolve().parent.parent
_OUT = _ROOT / "benchmarks" / "results" / "tool_outputs"
# run in a child process: the round's package first on the path, this checkout's benchmarks
_MEASURE = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from benchmarks.tool_output_retention import run_tool_output_retention
result = run_tool_output_retention()
print(json.dumps({name: data["summary"] for name, data in result["sets"].items()}))
"""


def _measure(commit: str, scratch: Path) -> dict[str, Any]:
    """The summary of every set, summarized by the package at ``commit``."""
    tree = scratch / commit
    subprocess.run(
        ["git", "-C", str(_ROOT), "worktree", "add", "--detach", "--quiet", str(tree), commit],
        check=True,
    )
    try:
        # only the package comes from the round's tree: a folder that holds just it
        package = scratch / f"{commit}-package"
        package.mkdir()
        (package / "langchain_vllm_budget").symlink_to(tree / "langchain_vllm_budget")
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(package), str(_ROOT)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        subprocess.run(
            ["git", "-C", str(_ROOT), "worktree", "remove", "--force", str(tree)], check=True
        )


def run_rounds() -> dict[str, Any]:
    """Measure every round of :data:`ROUNDS` on every set.

    Returns:
        ``{"rounds": {round: {"commit", "sets": {set: summary}}}}``, each set's summary as
        :func:`benchmarks.tool_output_retention.run_tool_output_retention` gives it.
    """
    rounds: dict[str, Any] = {}
    # a run that was killed leaves its worktrees registered: forget those first
    subprocess.run(["git", "-C", str(_ROOT), "worktree", "prune"], check=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name, commit in ROUNDS.items():
            short = subprocess.run(
                ["git", "-C", str(_ROOT), "rev-parse", "--short", commit],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            rounds[name] = {"commit": short, "sets": _measure(commit, Path(scratch))}
    return {"rounds": rounds}


def rounds_md(result: dict[str, Any]) -> list[str]:
    """The Markdown table: one row per round, one column per set (facts kept)."""
    names = list(next(iter(result["rounds"].values()))["sets"])
    lines = [
        "| round (commit) | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for name, data in result["rounds"].items():
        cells = [
            f"{s['kept']}/{s['facts']} ({s['kept'] / s['facts']:.1%})"
            for s in (data["sets"][n] for n in names)
        ]
        lines.append(f"| {name} (`{data['commit']}`) | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    """Run it and write ``rounds.json`` and ``rounds.md``."""
    result = run_rounds()
    result["started"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    _OUT.mkdir(parents=True, exist_ok=True)
    (_OUT / "rounds.json").write_text(json.dumps(result, indent=2) + "\n")
    header = [
        "# Tool-output retention by round",
        "",
        f"Run {result['started']}; command: `python -m benchmarks.tool_output_rounds`. Facts "
        "kept at the default cap (250 tokens), extractive, per set; each round's package on "
        "today's sets.",
        "",
    ]
    (_OUT / "rounds.md").write_text("\n".join([*header, *rounds_md(result)]) + "\n")
    print("\n".join(rounds_md(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
