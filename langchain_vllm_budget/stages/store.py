"""Where raw stage outputs live: the LangGraph store, one namespace per thread and run.

Key: the stage name; namespace: ``("stage_outputs", thread_id, run_id)``. A later run on the
same thread writes to its own namespace, so no run overwrites another's outputs, and every
run's outputs stay retrievable (``store.search(("stage_outputs", thread_id))`` lists them).
"""

from __future__ import annotations

from typing import Any

from langgraph.store.base import BaseStore

__all__ = ["RAW_OUTPUT_NAMESPACE", "get_raw_output", "raw_output_namespace"]

RAW_OUTPUT_NAMESPACE = "stage_outputs"
"""First element of the store namespace that holds raw stage outputs."""


def raw_output_namespace(thread_id: str, run_id: str) -> tuple[str, str, str]:
    """Store namespace of one run's raw stage outputs (the key is the stage name).

    Example:
        >>> raw_output_namespace("t-1", "run-2")
        ('stage_outputs', 't-1', 'run-2')
    """
    return (RAW_OUTPUT_NAMESPACE, thread_id or "no-thread", run_id or "no-run")


def get_raw_output(store: BaseStore, thread_id: str, run_id: str, stage: str) -> str | None:
    """The raw output of ``stage`` in a run, or ``None`` if it has not run.

    Example:
        >>> from langgraph.store.memory import InMemoryStore
        >>> store = InMemoryStore()
        >>> store.put(raw_output_namespace("t", "r"), "plan", {"content": "1. restart"})
        >>> get_raw_output(store, "t", "r", "plan")
        '1. restart'
        >>> get_raw_output(store, "t", "other-run", "plan") is None
        True
    """
    item = store.get(raw_output_namespace(thread_id, run_id), stage)
    if item is None:
        return None
    value: dict[str, Any] = item.value
    return str(value.get("content", ""))
