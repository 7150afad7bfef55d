"""The files of a benchmark that writes its own folder: ``results.json`` and ``summary.md``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_section(
    result: dict[str, Any],
    out: Path,
    command: str,
    to_md: Callable[[dict[str, Any]], list[str]],
) -> list[Path]:
    """Write ``result`` as ``results.json`` and its tables as ``summary.md`` into ``out``.

    The summary starts with the run's start (``result["started"]``) and the command.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "summary.md"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(
        "\n".join([f"Run {result['started']}: `{command}`.", "", *to_md(result), ""])
    )
    return paths
