"""The pipeline's state: the stages' summaries, rolling summary and ledger, per run.

:class:`~langchain_vllm_budget.stages.StagesState` holds everything the compressed stages
read and write; raw outputs are in the store, never in the state. Add the app's own fields
here.
"""

from __future__ import annotations

from dataclasses import dataclass

from langchain_vllm_budget.stages import StagesInput, StagesState

__all__ = ["InputState", "State"]


@dataclass(kw_only=True)
class InputState(StagesInput):
    """What a run starts from: ``{"request": ...}``."""


@dataclass(kw_only=True)
class State(StagesState):
    """The pipeline's state (the stages' fields; nothing app-specific yet)."""
