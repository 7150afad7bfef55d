"""Every setting of the package, its environment variable and its default, in one place.

One rule everywhere: **an explicit value wins over the environment, which wins over the
default**. ``ChatVLLM``, :class:`~langchain_vllm_budget.budget.TokenBudget`, the stage
building block, the pipeline's ``Context`` and the ``vllm-budget`` command line all read
their defaults from the :class:`Setting` objects below, so a setting has one name, one
environment variable and one default.

Two prefixes: ``VLLM_API_BASE`` / ``VLLM_API_KEY`` locate the server (the names vLLM and
OpenAI-compatible clients already use; vLLM's own ``--api-key`` also reads ``VLLM_API_KEY``),
and ``VLLM_BUDGET_*`` holds everything this package decides.

Example:
    >>> import os
    >>> os.environ["VLLM_BUDGET_OUTPUT_RESERVE"] = "2000"
    >>> OUTPUT_RESERVE.get()
    2000
    >>> OUTPUT_RESERVE.get(512)  # an explicit value wins
    512
    >>> del os.environ["VLLM_BUDGET_OUTPUT_RESERVE"]
    >>> OUTPUT_RESERVE.get()
    3000
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "API_BASE",
    "API_KEY",
    "APP_API_KEY",
    "CHECKPOINTER_DSN",
    "COMPACTION_TARGET",
    "COMPRESSION",
    "HANDOFF_VERBATIM_SHARE",
    "MAX_CONCURRENCY",
    "MAX_MODEL_LEN",
    "MIN_OUTPUT_TOKENS",
    "MODEL",
    "OUTPUT_RESERVE",
    "ROLLING_SUMMARY_MAX_TOKENS",
    "ROLLING_SUMMARY_MODE",
    "SAFETY_MARGIN",
    "SERVICE_SETTINGS",
    "SESSION_AFFINITY",
    "SESSION_HEADER",
    "SETTINGS",
    "SUMMARIZER_API_BASE",
    "SUMMARIZER_MAX_MODEL_LEN",
    "SUMMARIZER_MODEL",
    "SUMMARIZER_TOKENIZER",
    "SUMMARY_MAX_TOKENS",
    "THINKING_BUDGET",
    "TOKENIZER",
    "Setting",
    "SettingError",
]

T = TypeVar("T", str, int, float)


class SettingError(ValueError):
    """An environment variable holds a value its setting cannot take."""


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One setting: its name, environment variable, type and default.

    Attributes:
        name: The field name used by the package's classes.
        env: The environment variable that sets it.
        kind: ``str``, ``int`` or ``float``.
        default: The value when neither an explicit value nor the variable is given
            (``None``: unset, e.g. discovered from the server).
        description: One line for the README's settings table and ``--help``.
        legacy_env: Older names still read (with a ``DeprecationWarning``) when ``env`` is
            unset: the seed's ``LLM_*`` variables.
    """

    name: str
    env: str
    kind: type[T]
    default: T | None
    description: str
    legacy_env: tuple[str, ...] = ()

    def from_environment(self) -> T | None:
        """The environment's value (``env``, else a legacy name), else the default.

        Raises:
            SettingError: The variable is set but is not a valid ``kind``.
        """
        for var in (self.env, *self.legacy_env):
            raw = os.environ.get(var, "").strip()
            if not raw:
                continue
            if var != self.env:
                warnings.warn(
                    f"{var} is deprecated: set {self.env} instead.",
                    DeprecationWarning,
                    stacklevel=3,
                )
            return self._convert(var, raw)
        return self.default

    def get(self, explicit: T | None = None) -> T | None:
        """``explicit`` if given, else :meth:`from_environment`."""
        return explicit if explicit is not None else self.from_environment()

    def required_default(self) -> T:
        """The default of a setting that has one (for a field that cannot be unset).

        Raises:
            TypeError: The setting has no default.
        """
        if self.default is None:
            msg = f"The setting {self.name} has no default."
            raise TypeError(msg)
        return self.default

    def factory(self) -> Callable[[], T | None]:
        """A ``default_factory`` for pydantic fields and dataclasses."""
        return self.from_environment

    def required_factory(self) -> Callable[[], T]:
        """A ``default_factory`` for a field that cannot be unset (the setting has a default).

        Raises:
            TypeError: The setting has no default.
        """
        default = self.required_default()

        def read() -> T:
            value = self.from_environment()
            return default if value is None else value

        return read

    def _convert(self, var: str, raw: str) -> T:
        try:
            return self.kind(raw)
        except ValueError:
            what = "a whole number" if self.kind is int else "a number"
            msg = f"{var} must be {what} ({self.description.rstrip('.')}), got {raw!r}."
            raise SettingError(msg) from None


API_BASE: Setting[str] = Setting(
    "base_url",
    "VLLM_API_BASE",
    str,
    "http://localhost:8000/v1",
    "The vLLM server's OpenAI-compatible URL (ending in /v1).",
)
API_KEY: Setting[str] = Setting(
    "api_key",
    "VLLM_API_KEY",
    str,
    None,
    "The server's --api-key, if it was started with one.",
)
MODEL: Setting[str] = Setting(
    "model",
    "VLLM_BUDGET_MODEL",
    str,
    None,
    "The served model name (vLLM's --served-model-name) for the app and the CLI.",
    legacy_env=("LLM_MODEL",),
)
TOKENIZER: Setting[str] = Setting(
    "tokenizer",
    "VLLM_BUDGET_TOKENIZER",
    str,
    None,
    "The tokenizer for exact local counting without a /tokenize round trip: a folder, or a "
    "hub id already in the Hugging Face cache (with HF_HUB_OFFLINE=1 nothing is downloaded).",
)
MAX_MODEL_LEN: Setting[int] = Setting(
    "max_model_len",
    "VLLM_BUDGET_MAX_MODEL_LEN",
    int,
    None,
    "The context window in tokens; unset: read from the server's /v1/models.",
    legacy_env=("LLM_MAX_MODEL_LEN",),
)
OUTPUT_RESERVE: Setting[int] = Setting(
    "output_reserve",
    "VLLM_BUDGET_OUTPUT_RESERVE",
    int,
    3000,
    "The most output tokens a request is granted.",
    legacy_env=("LLM_OUTPUT_RESERVE",),
)
SAFETY_MARGIN: Setting[int] = Setting(
    "safety_margin",
    "VLLM_BUDGET_SAFETY_MARGIN",
    int,
    128,
    "Tokens kept free between input + output and the window.",
    legacy_env=("LLM_SAFETY_MARGIN",),
)
MIN_OUTPUT_TOKENS: Setting[int] = Setting(
    "min_output_tokens",
    "VLLM_BUDGET_MIN_OUTPUT_TOKENS",
    int,
    256,
    "The least output room a request needs; below it the overflow policy acts.",
    legacy_env=("LLM_MIN_OUTPUT_TOKENS",),
)
THINKING_BUDGET: Setting[int] = Setting(
    "thinking_budget",
    "VLLM_BUDGET_THINKING_BUDGET",
    int,
    None,
    "Most thinking tokens per request of a reasoning model (vLLM's thinking_token_budget; "
    "needs --reasoning-parser); unset: no limit.",
)
MAX_CONCURRENCY: Setting[int] = Setting(
    "max_concurrency",
    "VLLM_BUDGET_MAX_CONCURRENCY",
    int,
    None,
    "Most requests in flight per model (the server's --max-num-seqs); unset: no limit.",
    legacy_env=("VLLM_MAX_CONCURRENCY",),
)
SUMMARIZER_MODEL: Setting[str] = Setting(
    "summarizer_model",
    "VLLM_BUDGET_SUMMARIZER_MODEL",
    str,
    None,
    "The served name of a smaller summarizer model; unset: the main model.",
    legacy_env=("SUMMARIZER_MODEL",),
)
SUMMARIZER_API_BASE: Setting[str] = Setting(
    "summarizer_base_url",
    "VLLM_BUDGET_SUMMARIZER_API_BASE",
    str,
    None,
    "The summarizer's server URL; unset: the main server.",
    legacy_env=("SUMMARIZER_API_BASE",),
)
SUMMARIZER_MAX_MODEL_LEN: Setting[int] = Setting(
    "summarizer_max_model_len",
    "VLLM_BUDGET_SUMMARIZER_MAX_MODEL_LEN",
    int,
    None,
    "The summarizer's context window in tokens (its server's --max-model-len); unset: read "
    "from the summarizer's server, never the main model's window.",
)
SUMMARIZER_TOKENIZER: Setting[str] = Setting(
    "summarizer_tokenizer",
    "VLLM_BUDGET_SUMMARIZER_TOKENIZER",
    str,
    None,
    "The summarizer's tokenizer (a folder or a cached hub id); unset: the summarizer's "
    "server counts, or the main tokenizer when the summarizer is the main model.",
)
SUMMARY_MAX_TOKENS: Setting[int] = Setting(
    "summary_max_tokens",
    "VLLM_BUDGET_SUMMARY_MAX_TOKENS",
    int,
    250,
    "The hard cap on a compressed summary, in tokens.",
)
HANDOFF_VERBATIM_SHARE: Setting[float] = Setting(
    "handoff_verbatim_share",
    "VLLM_BUDGET_HANDOFF_VERBATIM_SHARE",
    float,
    0.2,
    "A stage output of at most this share of the stage model's window is handed off "
    "verbatim; a longer one is compressed to summary_max_tokens (0: compress every output "
    "over the cap).",
)

COMPACTION_TARGET: Setting[float] = Setting(
    "compaction_target",
    "VLLM_BUDGET_COMPACTION_TARGET",
    float,
    0.6,
    "After a compaction (on_overflow trim/summarize) the input fills at most this share of "
    "the input limit, leaving room for the next turns.",
)
ROLLING_SUMMARY_MAX_TOKENS: Setting[int] = Setting(
    "rolling_summary_max_tokens",
    "VLLM_BUDGET_ROLLING_SUMMARY_MAX_TOKENS",
    int,
    400,
    "The hard cap on a staged run's rolling summary, in tokens.",
)
ROLLING_SUMMARY_MODE: Setting[str] = Setting(
    "rolling_summary_mode",
    "VLLM_BUDGET_ROLLING_SUMMARY_MODE",
    str,
    "extractive",
    "How the rolling summary is merged: extractive (no model call) or llm.",
)
COMPRESSION: Setting[str] = Setting(
    "compression",
    "VLLM_BUDGET_COMPRESSION",
    str,
    "auto",
    "When a stage's summarizer is called: auto (only if the extractive summary loses "
    "entities), llm (always) or extractive (never).",
)
SESSION_AFFINITY: Setting[str] = Setting(
    "session_affinity",
    "VLLM_BUDGET_SESSION_AFFINITY",
    str,
    "thread",
    "thread: inside a LangGraph run each request carries a session key derived from the "
    "thread_id, so a router keeps the thread on one replica; off: no key.",
)
SESSION_HEADER: Setting[str] = Setting(
    "session_header",
    "VLLM_BUDGET_SESSION_HEADER",
    str,
    "X-Session-ID",
    "The header that carries the session key (vllm-router's consistent_hash reads X-Session-ID).",
)

TEMPERATURE: Setting[float] = Setting(
    "temperature",
    "VLLM_BUDGET_TEMPERATURE",
    float,
    0.0,
    "Sampling temperature of the pipeline's stage calls (0: greedy).",
)
REPETITION_PENALTY: Setting[float] = Setting(
    "repetition_penalty",
    "VLLM_BUDGET_REPETITION_PENALTY",
    float,
    1.05,
    "vLLM's repetition_penalty for the pipeline's stage calls (1.0: off; small models loop "
    "less at 1.05).",
)
CHECKPOINTER_DSN: Setting[str] = Setting(
    "checkpointer_dsn",
    "VLLM_BUDGET_CHECKPOINTER_DSN",
    str,
    None,
    "PostgreSQL DSN for vllm-budget run's checkpoints and store (threads, raw stage outputs); "
    "unset: a SQLite file.",
)
APP_API_KEY: Setting[str] = Setting(
    "app_api_key",
    "VLLM_BUDGET_APP_API_KEY",
    str,
    None,
    "The key the LangGraph server of langgraph.json asks every caller for (header x-api-key "
    "or Authorization: Bearer); unset: the server lets no one in.",
)

SETTINGS: tuple[Setting[str] | Setting[int] | Setting[float], ...] = (
    API_BASE,
    API_KEY,
    MODEL,
    TOKENIZER,
    MAX_MODEL_LEN,
    OUTPUT_RESERVE,
    SAFETY_MARGIN,
    MIN_OUTPUT_TOKENS,
    THINKING_BUDGET,
    MAX_CONCURRENCY,
    SUMMARIZER_MODEL,
    SUMMARIZER_API_BASE,
    SUMMARIZER_MAX_MODEL_LEN,
    SUMMARIZER_TOKENIZER,
    SUMMARY_MAX_TOKENS,
    HANDOFF_VERBATIM_SHARE,
    COMPACTION_TARGET,
    ROLLING_SUMMARY_MAX_TOKENS,
    ROLLING_SUMMARY_MODE,
    COMPRESSION,
    TEMPERATURE,
    REPETITION_PENALTY,
    SESSION_AFFINITY,
    SESSION_HEADER,
)
"""The package's settings, in the order of the README's table."""

SERVICE_SETTINGS: tuple[Setting[str], ...] = (CHECKPOINTER_DSN, APP_API_KEY)
"""The settings of the deployed services (where the runner keeps its data, the key the app
server asks for), in the order of the table in ``docs/deployment.md``."""
