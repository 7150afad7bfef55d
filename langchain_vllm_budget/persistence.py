"""Checkpointer and store pairs for staged graphs: SQLite in one file, or PostgreSQL.

A compressed stage keeps summaries in the checkpointed state and raw outputs in the store,
so a run needs both; these context managers open, set up and close them together.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore

__all__ = ["postgres_persistence", "sqlite_persistence", "store_label"]


def store_label(value: str) -> str:
    """``value`` (a thread id) as a label of a LangGraph store namespace.

    LangGraph's stores refuse a label with a period or a NUL byte in it
    (``InvalidNamespaceError``), and thread ids often have a period (an e-mail address, a chat
    message's timestamp). Such an id, and one that starts with ``%``, is written escaped: a
    ``%`` first, then the id with ``%`` as ``%25``, ``.`` as ``%2E`` and NUL as ``%00``. Every
    other id is its own label, so outputs stored under it before stay where they were, and no
    two ids share a label (an escaped label starts with ``%``; no other label does).

    Example:
        >>> store_label("alice@example.com"), store_label("1715000000.123456")
        ('%alice@example%2Ecom', '%1715000000%2E123456')
        >>> store_label("thread-7"), store_label("100%-done"), store_label("%2E")
        ('thread-7', '100%-done', '%%252E')
    """
    if "." not in value and "\x00" not in value and not value.startswith("%"):
        return value
    return "%" + value.replace("%", "%25").replace(".", "%2E").replace("\x00", "%00")


@contextmanager
def sqlite_persistence(path: str | Path) -> Iterator[tuple[BaseCheckpointSaver[Any], BaseStore]]:
    """A SQLite checkpointer and store in one database file (created if missing).

    Args:
        path: The database file.

    Yields:
        ``(checkpointer, store)`` for ``graph.compile(checkpointer=..., store=...)``.

    Example:
        >>> import tempfile, pathlib
        >>> with sqlite_persistence(pathlib.Path(tempfile.mkdtemp()) / "runs.sqlite") as pair:
        ...     type(pair[0]).__name__, type(pair[1]).__name__
        ('SqliteSaver', 'SqliteStore')
    """
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.store.sqlite import SqliteStore

    db = Path(path)
    db.parent.mkdir(parents=True, exist_ok=True)
    with (
        SqliteSaver.from_conn_string(str(db)) as saver,
        SqliteStore.from_conn_string(str(db)) as store,
    ):
        saver.setup()
        store.setup()
        yield saver, store


@contextmanager
def postgres_persistence(dsn: str) -> Iterator[tuple[BaseCheckpointSaver[Any], BaseStore]]:
    """A PostgreSQL checkpointer and store (needs the ``postgres`` extra).

    Args:
        dsn: A libpq connection string, e.g. ``postgresql://user@host:5432/db``.

    Yields:
        ``(checkpointer, store)``; tables are created if missing.
    """
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.store.postgres import PostgresStore

    with PostgresSaver.from_conn_string(dsn) as saver, PostgresStore.from_conn_string(dsn) as store:
        saver.setup()
        store.setup()
        yield saver, store
