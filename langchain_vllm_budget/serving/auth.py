"""The LangGraph server's authentication: one shared key, and no one in without it.

``langgraph.json`` names :data:`auth` (``"auth": {"path": ...}``), so ``langgraph dev`` and the
LangGraph Agent Server built from it ask every request for the key in
``VLLM_BUDGET_APP_API_KEY`` (:data:`~langchain_vllm_budget.settings.APP_API_KEY`), sent as
``x-api-key`` (what ``langgraph_sdk.get_client(api_key=...)`` sends) or as
``Authorization: Bearer <key>``. A server started without the variable refuses everyone: an
exposed server is never open by omission.

Example:
    >>> key_matches("s3cret", expected="s3cret"), key_matches("guess", expected="s3cret")
    (True, False)
    >>> key_matches("anything", expected=None)
    False
"""

from __future__ import annotations

import hmac

from langgraph_sdk import Auth

from langchain_vllm_budget import settings

__all__ = ["APP_USER", "auth", "authenticate", "key_matches", "presented_key"]

APP_USER = "api-key-holder"
"""The identity of every caller that gave the key (one key, one user)."""

auth = Auth()
"""The handler ``langgraph.json`` points at."""


def presented_key(headers: dict[bytes, bytes], authorization: str | None) -> str | None:
    """The key a request carries: ``x-api-key``, else an ``Authorization: Bearer`` token.

    Example:
        >>> presented_key({b"x-api-key": b"k1"}, None), presented_key({}, "Bearer k2")
        ('k1', 'k2')
        >>> presented_key({}, "Basic dXNlcg==") is None
        True
    """
    header = headers.get(b"x-api-key")
    if header:
        return header.decode("latin-1")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_matches(presented: str | None, *, expected: str | None) -> bool:
    """Whether ``presented`` is the configured key (constant-time); never without a key."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


@auth.authenticate
async def authenticate(headers: dict[bytes, bytes], authorization: str | None) -> str:
    """Let in a request that carries the app's key; refuse every other with 401.

    Raises:
        Auth.exceptions.HTTPException: 401, saying what is missing.
    """
    expected = settings.APP_API_KEY.get()
    if not expected:
        raise Auth.exceptions.HTTPException(
            status_code=401,
            detail=f"The server has no key ({settings.APP_API_KEY.env} is unset): it lets no "
            "one in. Set it where the server runs.",
        )
    if not key_matches(presented_key(headers, authorization), expected=expected):
        raise Auth.exceptions.HTTPException(
            status_code=401, detail="Send the app's key as x-api-key (or Authorization: Bearer)."
        )
    return APP_USER
