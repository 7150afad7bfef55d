"""Which token counter ``token_counter="auto"`` uses: the whole resolution chain, in one place.

A count is exact when it uses the model's own tokenizer and chat template. The fastest exact
counter is local (:class:`~langchain_vllm_budget.tokenizers.TransformersTokenCounter`: about
1 ms per agent-loop call at 12K tokens); the server can always count, one HTTP round trip per
new prompt. :func:`resolve_token_counter` takes the first of these that is available:

1. the tokenizer given explicitly (``ChatVLLM(tokenizer=...)``, env
   ``VLLM_BUDGET_TOKENIZER``): a folder or a hub id;
2. the server's model root (``/v1/models``), when it is a folder on this machine with
   tokenizer files;
3. for a root that is a hub id (``vllm serve Org/Name``), or a snapshot folder of a hub
   cache on the server (``.../models--Org--Name/snapshots/<rev>``, what an offline vLLM
   reports), that model's tokenizer in this machine's Hugging Face cache (looked up offline);
4. a download of that model's tokenizer files only (never weights; skipped, and logged, when
   ``HF_HUB_OFFLINE`` is set);
5. the server's render endpoint (``/v1/chat/completions/render``: the exact prompt token ids
   the chat endpoint would build; vLLM 0.32 serves it when started with
   ``--enable-scale-out``);
6. the server's ``/tokenize``.

Each decision is logged (logger ``langchain_vllm_budget.counter_resolution``, INFO) and kept
in :attr:`Resolution.steps`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from langchain_vllm_budget.tokenizers import (
    ApproximateTokenCounter,
    ServerTokenCounter,
    TokenCounter,
    TransformersTokenCounter,
)

__all__ = [
    "TOKENIZER_FILE_PATTERNS",
    "Resolution",
    "hub_id_of",
    "local_tokenizer_folder",
    "resolve_token_counter",
]

logger = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
TOKENIZER_FILE_PATTERNS: tuple[str, ...] = (
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "*.tiktoken",
    "config.json",
)
"""What is downloaded for counting: the tokenizer, its chat template and the model's small
``config.json`` (transformers reads the tokenizer class there); never weights."""

# A hub id: "Org/Name" (names of letters, digits, "-", "_", ".").
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A snapshot folder of a hub cache: ".../models--Org--Name/snapshots/<revision>".
_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<rev>[^/]+)/?$")
_TRUTHY = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class Resolution:
    """The counter chosen, and what was tried on the way.

    Attributes:
        counter: The counter to use.
        steps: One line per step tried, in order (also logged).
    """

    counter: TokenCounter
    steps: tuple[str, ...]


def hub_id_of(root: str) -> tuple[str, str | None] | None:
    """The hub id (and revision) a model root names, if it names one.

    Args:
        root: A ``/v1/models`` root: a hub id, or a server-side folder.

    Returns:
        ``(repo_id, revision)``: ``revision`` is ``None`` for a plain hub id; ``None`` when
        the root names no hub model.

    Example:
        >>> hub_id_of("Qwen/Qwen2.5-7B-Instruct-AWQ")
        ('Qwen/Qwen2.5-7B-Instruct-AWQ', None)
        >>> hub_id_of("/root/.cache/huggingface/hub/models--Qwen--Qwen3-8B/snapshots/abc123")
        ('Qwen/Qwen3-8B', 'abc123')
        >>> hub_id_of("/models/my-finetune") is None
        True
    """
    snapshot = _SNAPSHOT.search(root)
    if snapshot:
        return f"{snapshot['org']}/{snapshot['name']}", snapshot["rev"]
    if _HUB_ID.match(root) and not root.startswith(("./", "../")):
        return root, None
    return None


def local_tokenizer_folder(path: str) -> str | None:
    """``path`` if it is a folder on this machine holding tokenizer files, else ``None``."""
    folder = Path(path)
    if folder.is_dir() and any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return str(folder)
    return None


def _hub_offline() -> bool:
    """Whether downloads from the hub are off (read now, not at import as huggingface_hub does)."""
    from huggingface_hub import constants

    env = (
        os.environ.get(v, "").strip().upper() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return constants.HF_HUB_OFFLINE or any(value in _TRUTHY for value in env)


def _hub_cache_dir() -> str:
    """The hub cache folder as the environment sets it now (``HF_HUB_CACHE``, ``HF_HOME``)."""
    from huggingface_hub import constants

    if cache := os.environ.get("HF_HUB_CACHE"):
        return cache
    if home := os.environ.get("HF_HOME"):
        return os.path.join(home, "hub")
    return str(constants.HF_HUB_CACHE)


def cached_tokenizer(repo_id: str, revision: str | None = None) -> str | None:
    """The snapshot folder of ``repo_id``'s tokenizer in the local Hugging Face cache.

    Offline: ``huggingface_hub.try_to_load_from_cache`` reads the cache's ``refs`` and
    ``snapshots`` only.

    Args:
        repo_id: ``"Org/Name"``.
        revision: A snapshot's revision; default: the one ``refs/main`` names.

    Returns:
        The folder, when a tokenizer file and a chat template source are cached there.
    """
    from huggingface_hub import try_to_load_from_cache

    cache = _hub_cache_dir()
    for name in _TOKENIZER_FILES:
        try:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache, revision=revision)
        except ValueError:  # not a valid repo id after all
            return None
        if isinstance(found, str):
            return local_tokenizer_folder(str(Path(found).parent))
    return None


def download_tokenizer(repo_id: str, revision: str | None = None) -> str:
    """Download ``repo_id``'s tokenizer files (:data:`TOKENIZER_FILE_PATTERNS`) to the cache.

    Args:
        repo_id: ``"Org/Name"``.
        revision: The revision; default: ``main``.

    Returns:
        The snapshot folder holding them.

    Raises:
        Exception: Whatever ``huggingface_hub.snapshot_download`` raises (no network, gated
            or missing repository).
    """
    from huggingface_hub import snapshot_download

    return str(
        snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=_hub_cache_dir(),
            allow_patterns=list(TOKENIZER_FILE_PATTERNS),
        )
    )


def _tokenizer_for(name: str, steps: list[str]) -> str | None:
    """A local folder with ``name``'s tokenizer: the folder itself, the cache, or a download."""
    if folder := local_tokenizer_folder(name):
        steps.append(f"local folder {folder}")
        return folder
    hub = hub_id_of(name)
    if hub is None:
        steps.append(f"{name!r} is neither a folder on this machine nor a hub id")
        return None
    repo_id, revision = hub
    if folder := cached_tokenizer(repo_id, revision):
        steps.append(f"Hugging Face cache: {repo_id} at {folder}")
        return folder
    if revision is not None and (folder := cached_tokenizer(repo_id)):
        # The server's snapshot is not here, another revision is: the same model, most likely
        # the same tokenizer; counts are checked against the server's usage as ever.
        steps.append(f"Hugging Face cache: {repo_id} at {folder} (server has revision {revision})")
        return folder
    steps.append(f"{repo_id} is not in the Hugging Face cache ({_hub_cache_dir()})")
    if _hub_offline():
        steps.append(f"not downloading {repo_id}'s tokenizer: HF_HUB_OFFLINE is set")
        return None
    try:
        folder = download_tokenizer(repo_id, revision)
    except Exception as exc:  # network, authentication, missing repo: all mean "not here"
        steps.append(f"downloading {repo_id}'s tokenizer files failed: {type(exc).__name__}")
        return None
    steps.append(f"downloaded {repo_id}'s tokenizer files (no weights) to {folder}")
    return folder


def _server_counter(
    make_server: Callable[[Literal["render", "tokenize"]], ServerTokenCounter], steps: list[str]
) -> ServerTokenCounter:
    render = make_server("render")
    status = render.render_status()
    if status == 200:
        steps.append("the server's /v1/chat/completions/render")
        return render
    why = "disabled: start vLLM with --enable-scale-out" if status == 403 else f"HTTP {status}"
    steps.append(f"the server's render endpoint is not available ({why}); /tokenize")
    return make_server("tokenize")


def resolve_token_counter(
    choice: str,
    *,
    tokenizer: str | None,
    root: str | Callable[[], str | None] | None,
    make_server: Callable[[Literal["render", "tokenize"]], ServerTokenCounter],
) -> Resolution:
    """Resolve ``choice`` (``auto``, ``transformers``, ``server``, ``approximate``) to a counter.

    Args:
        choice: ``"auto"`` runs the whole chain (module docstring); ``"transformers"`` its
            local steps (1-4) only; ``"server"`` its server steps (5-6) only.
        tokenizer: The explicit tokenizer (a folder or hub id), if any.
        root: The server's model root from ``/v1/models``, if known, or how to ask for it
            (called only when the explicit tokenizer is not found).
        make_server: Builds the server counter for an endpoint (``"render"`` or
            ``"tokenize"``).

    Returns:
        The counter and the steps taken.

    Raises:
        ValueError: ``"transformers"`` was asked for and no local tokenizer was found, or
            ``choice`` is unknown.
        TokenCountError: A tokenizer folder was found but cannot be loaded.
    """
    steps: list[str] = []
    counter: TokenCounter
    if choice == "approximate":
        counter = ApproximateTokenCounter()
        steps.append("approximate (chars / 4), as asked")
    elif choice == "server":
        counter = _server_counter(make_server, steps)
    elif choice in ("auto", "transformers"):
        folder = None
        for source, given in (("explicit tokenizer", tokenizer), ("server's model root", root)):
            name = given() if callable(given) else given
            if name:
                steps.append(f"{source} {name!r}")
                folder = _tokenizer_for(name, steps)
                if folder is not None:
                    break
        if folder is not None:
            counter = TransformersTokenCounter(folder)
        elif choice == "transformers":
            msg = (
                "token_counter='transformers' needs a tokenizer on this machine: "
                + "; ".join(steps or ["no tokenizer given and the server's root is unknown"])
                + ". Set `tokenizer` (or VLLM_BUDGET_TOKENIZER) to the model's folder or hub id."
            )
            raise ValueError(msg)
        else:
            counter = _server_counter(make_server, steps)
    else:
        msg = f"Unknown token_counter {choice!r}: auto, server, transformers or approximate."
        raise ValueError(msg)
    logger.info("Token counter %r: %s", counter, " -> ".join(steps))
    return Resolution(counter, tuple(steps))
