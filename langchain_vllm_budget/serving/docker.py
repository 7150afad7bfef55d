"""The ``docker/`` files, rendered from the server profiles.

``vllm-budget profiles render`` writes them; a unit test checks that the committed files are
what the profiles render.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from langchain_vllm_budget.serving.planner import VLLM_IMAGE
from langchain_vllm_budget.serving.profiles import PROFILES, ServerProfile

__all__ = [
    "DOCKER_FILES",
    "render_compose",
    "render_docker_files",
    "render_dockerfile",
    "render_env_example",
]

DOCKER_FILES = ("Dockerfile.vllm", "compose.yaml", ".env.example")
"""The files of ``docker/`` that :func:`render_docker_files` writes."""

_GENERATED = (
    "# Generated from langchain_vllm_budget/serving/profiles.py by `vllm-budget profiles render`:\n"
    "# change the profiles and render again rather than editing this file.\n"
)
_HEALTH_PROBE = "import urllib.request; urllib.request.urlopen('http://localhost:8000/health')"
_HF_CACHE = "/root/.cache/huggingface"
_APP_PORT = 2024


def render_dockerfile(profile: ServerProfile | None = None) -> str:
    """``docker/Dockerfile.vllm``: the pinned vLLM image serving ``profile`` by default.

    The compose services replace ``CMD`` with their own profile's arguments.
    """
    profile = profile or PROFILES["long-window"]
    return (
        _GENERATED
        + f"# The default command serves the {profile.name!r} profile.\n"
        + f"FROM {VLLM_IMAGE}\n\n"
        + f"ENV HF_HOME={_HF_CACHE} \\\n    VLLM_NO_USAGE_STATS=1\n\n"
        + f"EXPOSE {profile.port}\n\n"
        + "HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=5 \\\n"
        + f'    CMD ["python3", "-c", "{_HEALTH_PROBE}"]\n\n'
        + 'ENTRYPOINT ["vllm", "serve"]\n'
        + f"CMD {json.dumps(profile.compose_command())}\n"
    )


def _vllm_service(
    profile: ServerProfile, *, compose_profile: str, host_port: int
) -> dict[str, Any]:
    gpus = max(1, profile.tensor_parallel_size)
    return {
        "profiles": [compose_profile],
        "build": {"context": ".", "dockerfile": "Dockerfile.vllm"},
        "image": "langchain-vllm-budget/vllm:" + VLLM_IMAGE.rsplit(":", 1)[1],
        "command": profile.compose_command(),
        "ipc": "host",
        "ports": [f"{host_port}:{profile.port}"],
        "environment": {"HF_TOKEN": "${HF_TOKEN:-}"},
        "volumes": [f"hf-cache:{_HF_CACHE}"],
        "deploy": {
            "resources": {
                "reservations": {
                    "devices": [{"driver": "nvidia", "count": gpus, "capabilities": ["gpu"]}]
                }
            }
        },
        "healthcheck": {
            "test": ["CMD", "python3", "-c", _HEALTH_PROBE],
            "interval": "30s",
            "timeout": "5s",
            "retries": 5,
            "start_period": "600s",
        },
        "restart": "unless-stopped",
    }


def render_compose() -> str:
    """``docker/compose.yaml``: the vLLM server(s) and the LangGraph app.

    Two compose profiles choose the GPU layout (``COMPOSE_PROFILES`` in ``.env``):
    ``solo`` runs ``long-window`` alone; ``summarizer`` runs ``long-window-shared`` and
    ``summarizer`` side by side on one GPU. Both reasoners answer at ``http://vllm:8000``.
    """
    main = PROFILES["long-window"]
    shared = PROFILES["long-window-shared"]
    summarizer = PROFILES["summarizer"]
    shared_service = _vllm_service(shared, compose_profile="summarizer", host_port=8000)
    shared_service["networks"] = {"default": {"aliases": ["vllm"]}}
    app_env = {
        "VLLM_API_BASE": "${VLLM_API_BASE:-http://vllm:8000/v1}",
        "VLLM_API_KEY": "${VLLM_API_KEY:-}",
        **{key: f"${{{key}:-{value}}}" for key, value in main.client_env().items()},
        "SUMMARIZER_MODEL": "${SUMMARIZER_MODEL:-" + main.model + "}",
        "SUMMARIZER_API_BASE": "${SUMMARIZER_API_BASE:-http://vllm:8000/v1}",
        # The pipeline's run-time Context reads VLLM_BUDGET_<FIELD>: fed from the same
        # variables, so one .env configures the chat model and the graph alike.
        "VLLM_BUDGET_BASE_URL": "${VLLM_API_BASE:-http://vllm:8000/v1}",
        "VLLM_BUDGET_REASONING_MODEL": "${LLM_MODEL:-" + main.model + "}",
        "VLLM_BUDGET_MAX_MODEL_LEN": "${LLM_MAX_MODEL_LEN:-" + str(main.max_model_len) + "}",
        "VLLM_BUDGET_SUMMARIZER_MODEL": "${SUMMARIZER_MODEL:-" + main.model + "}",
        "VLLM_BUDGET_SUMMARIZER_BASE_URL": "${SUMMARIZER_API_BASE:-http://vllm:8000/v1}",
    }
    document = {
        "name": "langchain-vllm-budget",
        "services": {
            "vllm": _vllm_service(main, compose_profile="solo", host_port=8000),
            "vllm-shared": shared_service,
            "vllm-summarizer": _vllm_service(
                summarizer, compose_profile="summarizer", host_port=8001
            ),
            "app": {
                "build": {"context": "..", "dockerfile": "docker/Dockerfile.app"},
                "environment": app_env,
                "ports": [f"{_APP_PORT}:{_APP_PORT}"],
                "depends_on": {
                    name: {"condition": "service_healthy", "required": False}
                    for name in ("vllm", "vllm-shared", "vllm-summarizer")
                },
                "restart": "unless-stopped",
            },
        },
        "volumes": {"hf-cache": {}},
    }
    body: str = yaml.safe_dump(document, sort_keys=False, width=100, default_flow_style=False)
    return _GENERATED + body


def render_env_example() -> str:
    """``docker/.env.example``: copy to ``docker/.env``; compose reads it for its variables."""
    main = PROFILES["long-window"]
    summarizer = PROFILES["summarizer"]
    lines = [
        _GENERATED.rstrip("\n"),
        "# Copy to docker/.env and fill in HF_TOKEN if the models need it.",
        "",
        "# solo: long-window alone on the GPU; summarizer: long-window-shared + summarizer.",
        "COMPOSE_PROFILES=solo",
        "HF_TOKEN=",
        "",
        "# The client (ChatVLLM / TokenBudget.from_env); the window equals --max-model-len.",
        "VLLM_API_BASE=http://vllm:8000/v1",
        "VLLM_API_KEY=",
        *(f"{key}={value}" for key, value in main.client_env().items()),
        "",
        "# The summarizer model; with COMPOSE_PROFILES=summarizer use",
        f"# SUMMARIZER_MODEL={summarizer.model} and "
        "SUMMARIZER_API_BASE=http://vllm-summarizer:8000/v1",
        f"SUMMARIZER_MODEL={main.model}",
        "SUMMARIZER_API_BASE=http://vllm:8000/v1",
    ]
    return "\n".join(lines) + "\n"


def render_docker_files() -> dict[str, str]:
    """Every generated file of ``docker/``, by name (see :data:`DOCKER_FILES`)."""
    return {
        "Dockerfile.vllm": render_dockerfile(),
        "compose.yaml": render_compose(),
        ".env.example": render_env_example(),
    }
