"""Where raw stage outputs live: the LangGraph store, one namespace per thread and run.

Key: the stage name; namespace: ``("stage_outputs", thread_id, run_id)`` (the ids as
:func:`~langchain_vllm_budget.persistence.store_label` writes them). A later run on the
same thread writes to its own namespace, so no run overwrites another's outputs, and every
run's outputs stay retrievable (``store.search(("stage_outputs", store_label(thread_id)))``
lists them). A stage that runs again within a run (a loop in the graph) keeps its latest
output under its name and the earlier ones under ``"<stage>#1"``, ``"<stage>#2"``, ...
(:func:`get_raw_output` with ``attempt=``). A stage that failed after storing its output
and was run again (a retry policy, a resumed run) counts the stored one as an attempt too;
stages sent as several tasks of one step (``Send``) share one key, so give each its own stage
name.
"""

from __future__ import annotations

from typing import Any

from langgraph.store.base import BaseStore

from langchain_vllm_budget.persistence import store_label

__all__ = [
    "RAW_OUTPUT_NAMESPACE",
    "archive_earlier_output",
    "get_raw_output",
    "raw_output_namespace",
]

RAW_OUTPUT_NAMESPACE = "stage_outputs"
"""First element of the store namespace that holds raw stage outputs."""


def raw_output_namespace(thread_id: str, run_id: str) -> tuple[str, str, str]:
    """Store namespace of one run's raw stage outputs (the key is the stage name).

    Example:
        >>> raw_output_namespace("t-1", "run-2")
        ('stage_outputs', 't-1', 'run-2')
    """
    return (
        RAW_OUTPUT_NAMESPACE,
        store_label(thread_id) if thread_id else "no-thread",
        store_label(run_id) if run_id else "no-run",
    )


def archive_earlier_output(
    stage: str, earlier: dict[str, Any], record: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Where an earlier output of a stage run again goes, and the new record (numbered).

    Args:
        stage: The stage's name (the key of its latest output).
        earlier: The record stored under ``stage`` so far.
        record: The new output's record.

    Returns:
        The key for ``earlier`` (``"<stage>#<its attempt>"``) and ``record`` with the next
        attempt number.

    Example:
        >>> archive_earlier_output("act", {"content": "first"}, {"content": "second"})
        ('act#1', {'content': 'second', 'attempt': 2})
    """
    attempt = int(earlier.get("attempt", 1))
    return f"{stage}#{attempt}", {**record, "attempt": attempt + 1}


def get_raw_output(
    store: BaseStore, thread_id: str, run_id: str, stage: str, *, attempt: int | None = None
) -> str | None:
    """The raw output of ``stage`` in a run, or ``None`` if it has not run.

    ``attempt`` picks an earlier output of a stage that ran more than once in the run (1 for
    the first); default: the latest.

    Example:
        >>> from langgraph.store.memory import InMemoryStore
        >>> store = InMemoryStore()
        >>> store.put(raw_output_namespace("t", "r"), "plan", {"content": "1. restart"})
        >>> get_raw_output(store, "t", "r", "plan")
        '1. restart'
        >>> get_raw_output(store, "t", "other-run", "plan") is None
        True
    """
    namespace = raw_output_namespace(thread_id, run_id)
    item = store.get(namespace, stage)
    if attempt is not None and (item is None or int(item.value.get("attempt", 1)) != attempt):
        item = store.get(namespace, f"{stage}#{attempt}")
    if item is None:
        return None
    value: dict[str, Any] = item.value
    return str(value.get("content", ""))
