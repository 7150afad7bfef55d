"""Session affinity for vLLM replicas behind a router: one key per LangGraph thread.

Routers in front of several vLLM replicas (vLLM's ``vllm-router`` with ``--policy
consistent_hash``, production-stack, llm-d) keep a conversation on the replica that holds its
KV prefix when every request of the conversation carries the same session key. Inside a
LangGraph run, :class:`SessionRouting` derives that key from the run's ``thread_id``
(``config["configurable"]["thread_id"]``, read with :func:`langgraph.config.get_config`;
where no config in context names one, from the call's callback metadata, where LangGraph puts
it), so
every call of a thread, its subagents (subgraphs run with the parent's config) and the
summarizer calls made inside it send the same key, and different threads spread over the
replicas. A run without a ``thread_id`` (no checkpointer), and a call outside any run, send
no key unless one is given explicitly.

The key sent is a hash of the thread id (:func:`session_key`): stable across processes and
restarts, one HTTP-header-safe token, and the thread id itself does not leave the process.

Routers that pin sessions by a cookie get one cookie jar per session from
:class:`SessionCookieJars`: httpx event hooks that store each response's ``Set-Cookie`` under
the request's session key and send the session's cookies back on its next requests.

Example:
    >>> routing = SessionRouting(affinity="thread", header="X-Session-ID", session_id="s-1")
    >>> routing.headers()
    {'X-Session-ID': 's-1'}
    >>> SessionRouting(affinity="thread", header="X-Session-ID").headers()  # no run, no id
    {}
    >>> session_key("thread-42") == session_key("thread-42")
    True
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Literal

import httpx
from langgraph.config import get_config

__all__ = [
    "SessionAffinity",
    "SessionCookieJars",
    "SessionRouting",
    "call_headers",
    "current_thread_id",
    "session_key",
]

SessionAffinity = Literal["thread", "off"]
"""``"thread"``: one session key per LangGraph thread; ``"off"``: send none (an explicit
``session_id`` is not sent either)."""

_KEY_PREFIX = "lg-"
_MAX_SESSIONS = 4096


def current_thread_id(metadata: Mapping[str, Any] | None = None) -> str | None:
    """The ``thread_id`` of the run a call belongs to, or None outside a run.

    Args:
        metadata: The call's callback metadata (its run manager's), where LangGraph puts
            the run's ``thread_id``: read where no config in context names a thread (an
            async node on Python 3.10, where LangGraph cannot put the run's config there,
            that passes its ``config`` on to the model's ``ainvoke``).

    Returns:
        The run's ``config["configurable"]["thread_id"]`` (:func:`langgraph.config.get_config`);
        where no config in context names a thread, the ``thread_id`` in ``metadata``.

    Example:
        >>> current_thread_id({"thread_id": "t-7", "langgraph_node": "agent"})
        't-7'
        >>> current_thread_id() is None  # not inside a runnable
        True
    """
    try:
        thread_id = (get_config().get("configurable") or {}).get("thread_id")
    except RuntimeError:  # no run's config in context
        thread_id = None
    if thread_id is None:
        thread_id = (metadata or {}).get("thread_id")
    return None if thread_id is None else str(thread_id)


def session_key(thread_id: str) -> str:
    """The session key sent for a thread: a stable hash of its id.

    Example:
        >>> session_key("7c1e")
        'lg-46642634dd0a8d450b1cb7c8e73d8a8e'
    """
    return _KEY_PREFIX + hashlib.sha256(thread_id.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SessionRouting:
    """Which session key a request carries, and in which header.

    Attributes:
        affinity: ``"thread"`` (a key per LangGraph thread) or ``"off"``.
        header: The header that carries the key (``vllm-router`` reads ``X-Session-ID``).
        session_id: A fixed key; wins over the thread's.
    """

    affinity: SessionAffinity
    header: str
    session_id: str | None = None

    def key(self, metadata: Mapping[str, Any] | None = None) -> str | None:
        """The key for a request made now: the explicit id, else its thread's.

        Args:
            metadata: The call's callback metadata (see :func:`current_thread_id`).
        """
        if self.affinity == "off":
            return None
        if self.session_id:
            return self.session_id
        thread_id = current_thread_id(metadata)
        return None if thread_id is None else session_key(thread_id)

    def headers(self, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
        """The headers to add to a request made now (empty when there is no key)."""
        key = self.key(metadata)
        return {} if key is None else {self.header: key}


def call_headers(
    session: Mapping[str, str],
    *,
    call: Mapping[str, str] | None,
    model: Mapping[str, str] | None,
    client: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``extra_headers`` a call sends: its own, with the session key beside them.

    As in langchain-openai, a call's own ``extra_headers`` replace the model's (``call`` is
    ``None`` when it passes none). The session headers are added unless the user already set
    that header there or in the client's ``default_headers`` (in any letter case): the user's
    own key stands.

    Args:
        session: The session headers (:meth:`SessionRouting.headers`).
        call: The call's own ``extra_headers``, if it passes any.
        model: The model's ``extra_headers``.
        client: The client's ``default_headers``.

    Example:
        >>> key = {"X-Session-ID": "lg-1"}
        >>> call_headers(key, call=None, model={"X-Tenant": "acme"})
        {'X-Session-ID': 'lg-1', 'X-Tenant': 'acme'}
        >>> call_headers(key, call={"X-Call": "1"}, model={"X-Tenant": "acme"})
        {'X-Session-ID': 'lg-1', 'X-Call': '1'}
        >>> call_headers(key, call={"x-session-id": "mine"}, model=None)
        {'x-session-id': 'mine'}
    """
    own = dict(model or {}) if call is None else dict(call)
    taken = {name.lower() for name in [*own, *(client or {})]}
    return {**{k: v for k, v in session.items() if k.lower() not in taken}, **own}


class SessionCookieJars:
    """One cookie jar per session key, kept by httpx event hooks.

    A response's ``Set-Cookie`` goes into the jar of the session named by its request's
    session header; a request that names a session sends that jar's cookies. Requests
    without the header are left alone. The jars of the least recently used sessions are
    dropped beyond ``max_sessions``.

    Args:
        header: The session header (the same as :attr:`SessionRouting.header`).
        max_sessions: Most jars kept.
    """

    def __init__(self, header: str, *, max_sessions: int = _MAX_SESSIONS) -> None:
        self.header = header
        self.max_sessions = max_sessions
        self._jars: OrderedDict[str, httpx.Cookies] = OrderedDict()
        self._lock = threading.Lock()

    def jar(self, key: str) -> httpx.Cookies:
        """The cookies of session ``key`` (a new, empty jar for a new key)."""
        with self._lock:
            jar = self._jars.pop(key, None) or httpx.Cookies()
            self._jars[key] = jar
            while len(self._jars) > self.max_sessions:
                self._jars.popitem(last=False)
            return jar

    def on_request(self, request: httpx.Request) -> None:
        """Add the session's cookies to a request that names a session."""
        key = request.headers.get(self.header)
        if key is None or "cookie" in request.headers:
            return
        jar = self.jar(key)
        if jar:
            jar.set_cookie_header(request)

    def on_response(self, response: httpx.Response) -> None:
        """Keep the cookies a response sets, in its request's session jar."""
        key = response.request.headers.get(self.header)
        if key is not None and "set-cookie" in response.headers:
            self.jar(key).extract_cookies(response)

    async def _aon_request(self, request: httpx.Request) -> None:
        self.on_request(request)

    async def _aon_response(self, response: httpx.Response) -> None:
        self.on_response(response)

    @staticmethod
    def _no_shared_cookies() -> CookieJar:
        # An httpx client keeps one jar for all its requests; the sessions' cookies must not
        # mix there, so the client's own jar accepts none.
        return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))

    def client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` (``kwargs`` as httpx takes them) that keeps the jars."""
        hooks: dict[str, list[Callable[..., Any]]] = {
            "request": [self.on_request],
            "response": [self.on_response],
        }
        return httpx.Client(event_hooks=hooks, cookies=self._no_shared_cookies(), **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` (``kwargs`` as httpx takes them) that keeps the jars."""
        hooks: dict[str, list[Callable[..., Any]]] = {
            "request": [self._aon_request],
            "response": [self._aon_response],
        }
        return httpx.AsyncClient(event_hooks=hooks, cookies=self._no_shared_cookies(), **kwargs)
