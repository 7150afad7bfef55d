"""The ``vllm-budget`` console script: a clear message when the ``cli`` extra is missing.

``pip install langchain-vllm-budget`` brings the library (the chat model, the middlewares,
the stages and the pipeline); the command line needs the ``cli`` extra. This module imports
only the standard library until it has checked that the extra is installed, so a plain
install gets one line saying what to install instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["CLI_REQUIREMENTS", "main", "missing_cli_requirements"]

CLI_REQUIREMENTS: dict[str, str] = {
    "typer": "typer",
    "rich": "rich",
    "yaml": "pyyaml",
    "langgraph.checkpoint.sqlite": "langgraph-checkpoint-sqlite",
}
"""Module the command line imports -> the distribution of the ``cli`` extra that provides it."""


def missing_cli_requirements() -> list[str]:
    """The distributions of the ``cli`` extra that are not installed.

    Example:
        >>> missing_cli_requirements()  # everything is installed in the development venv
        []
    """
    missing = []
    for module, distribution in CLI_REQUIREMENTS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(distribution)
    return missing


def main() -> None:
    """Run ``vllm-budget``, or say which extra to install and exit with status 2."""
    missing = missing_cli_requirements()
    if missing:
        sys.stderr.write(
            "vllm-budget needs the command line's extra: "
            "pip install 'langchain-vllm-budget[cli]' "
            f"(missing: {', '.join(missing)}).\n"
        )
        raise SystemExit(2)
    from langchain_vllm_budget.cli import main as cli_main

    cli_main()
