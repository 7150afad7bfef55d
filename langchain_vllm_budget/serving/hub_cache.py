"""Put a locally built model into a Hugging Face cache, laid out as the hub lays it out.

A vLLM server on a GPU box is usually started with a hub id (``vllm serve Org/Name``): its
``/v1/models`` root is that id, not a folder. To run that same path here, with no hub
reachable, a model from :mod:`~langchain_vllm_budget.serving.local_models` is copied into a
cache folder as ``huggingface_hub`` writes one (``models--Org--Name/blobs/<sha256>``,
``snapshots/<revision>/<file>`` linking to the blobs, ``refs/main`` naming the revision).
A server started with ``HF_HOME`` pointing at the cache's parent, ``HF_HUB_OFFLINE=1`` and the
hub id as its model loads it from there, as it would load a model downloaded earlier.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from langchain_vllm_budget.serving.local_models import ensure_local_model

__all__ = ["hub_cache_folder", "install_in_hub_cache"]

_REVISION = "0" * 40
"""The snapshot's revision: a commit hash's shape (the hub's own would come from git)."""


def hub_cache_folder(hf_home: Path, repo_id: str) -> Path:
    """The folder of ``repo_id`` in the hub cache under ``hf_home`` (``hub/models--Org--Name``).

    Example:
        >>> hub_cache_folder(Path("/h"), "Org/Name").as_posix()
        '/h/hub/models--Org--Name'
    """
    return hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def install_in_hub_cache(
    model: str, repo_id: str, hf_home: Path, patterns: Sequence[str] | None = None
) -> Path:
    """Copy the local model ``model`` into the hub cache under ``hf_home`` as ``repo_id``.

    Built first if needed (:func:`~langchain_vllm_budget.serving.local_models.ensure_local_model`).
    An existing snapshot is replaced.

    Args:
        model: A name from :data:`~langchain_vllm_budget.serving.local_models.LOCAL_MODELS`.
        repo_id: The hub id to file it under, ``"Org/Name"``.
        hf_home: The folder ``HF_HOME`` will point at.
        patterns: Only the files matching one of these ``fnmatch`` patterns (e.g.
            :data:`~langchain_vllm_budget.counter_resolution.TOKENIZER_FILE_PATTERNS`, as a
            tokenizer-only download leaves the cache); default: every file.

    Returns:
        The snapshot folder (what ``huggingface_hub`` resolves ``repo_id`` to).
    """
    source = ensure_local_model(model)
    folder = hub_cache_folder(hf_home, repo_id)
    snapshot = folder / "snapshots" / _REVISION
    if snapshot.exists():
        shutil.rmtree(snapshot)
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        if not file.is_file() or file.name.startswith("."):
            continue
        if patterns is not None and not any(fnmatch.fnmatch(file.name, p) for p in patterns):
            continue
        blob = folder / "blobs" / _sha256(file)
        if not blob.exists():
            shutil.copyfile(file, blob)
        # Relative links, as huggingface_hub makes them.
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(_REVISION)
    return snapshot
