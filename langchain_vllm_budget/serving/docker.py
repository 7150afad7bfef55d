"""The ``docker/`` files, rendered from the server profiles and layouts.

``vllm-budget profiles render`` writes them; a unit test checks that the committed files are
what the profiles render, and validates ``compose.yaml`` with Docker Compose itself.

``compose.yaml`` has one compose profile per layout of
:data:`~langchain_vllm_budget.serving.profiles.LAYOUTS` (``COMPOSE_PROFILES=solo``,
``balanced`` or ``summarizer``, one at a time).
Each holds the layout's vLLM servers and its own app service, whose environment holds the
package's settings (:mod:`langchain_vllm_budget.settings`) for exactly those servers:

* server-bound settings are fixed by the layout (URLs, models, tokenizers, windows,
  concurrency): they cannot drift from the ``vllm serve`` arguments beside them;
* client policy (output reserve, safety margin, minimum output, summary cap) defaults to the
  profile's value and may be overridden from ``docker/.env``; so may ``VLLM_API_KEY``, which the
  vLLM servers read too.

Start order: a layout's summarizer starts once its reasoner is healthy (vLLM checks at
start-up that its ``--gpu-memory-utilization`` share of the GPU is free, and profiles memory
while loading), and the app once every server is healthy. The app reads the servers' Hugging
Face cache read-only, with ``HF_HUB_OFFLINE=1``, so it counts tokens with the models' own
tokenizers locally instead of a ``/tokenize`` round trip per count.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import yaml

from langchain_vllm_budget import settings
from langchain_vllm_budget.serving.planner import VLLM_IMAGE
from langchain_vllm_budget.serving.profiles import LAYOUTS, PROFILES, Layout, ServerProfile

__all__ = [
    "APP_HF_ENV",
    "APP_POLICY_SETTINGS",
    "COMPOSE_FILE",
    "DOCKER_FILES",
    "REASONER_HOST",
    "app_environment",
    "app_service_name",
    "compose_up_command",
    "render_compose",
    "render_docker_files",
    "render_dockerfile",
    "render_env_example",
    "server_service_name",
]

DOCKER_FILES = ("Dockerfile.vllm", "compose.yaml", ".env.example")
"""The files of ``docker/`` that :func:`render_docker_files` writes."""

COMPOSE_FILE = "docker/compose.yaml"
"""The compose file, relative to the repository root."""

REASONER_HOST = "vllm"
"""The network alias of every layout's reasoner: the app's URL is the same in all layouts."""

_HF_CACHE = "/root/.cache/huggingface"
_APP_PORT = 2024
_SUMMARIZER_HOST_PORT = 8001

APP_HF_ENV: Mapping[str, str] = MappingProxyType({"HF_HOME": _HF_CACHE, "HF_HUB_OFFLINE": "1"})
"""The app container's Hugging Face variables (the only ones that are not settings): the
tokenizers load from the vLLM servers' cache, mounted read-only, and nothing is downloaded."""

APP_POLICY_SETTINGS: tuple[settings.Setting[int], ...] = (
    settings.OUTPUT_RESERVE,
    settings.SAFETY_MARGIN,
    settings.MIN_OUTPUT_TOKENS,
    settings.SUMMARY_MAX_TOKENS,
)
"""Client policy: settings of the app that ``docker/.env`` may override (the others are bound
to the layout's servers)."""

_GENERATED = (
    "# Generated from langchain_vllm_budget/serving/profiles.py by `vllm-budget profiles render`:\n"
    "# change the profiles and render again rather than editing this file.\n"
)
_HEALTH_PROBE = "import urllib.request; urllib.request.urlopen('http://localhost:8000/health')"
# Checked every 5 s while a server starts (compose's start_interval), so the next server
# and the app start soon after it is ready; every 30 s once it runs.
_HEALTH_TIMING = {"interval": "30s", "timeout": "5s", "retries": 5, "start_period": "600s"}
_START_INTERVAL = "5s"


def server_service_name(profile: ServerProfile) -> str:
    """The compose service that runs ``profile``: ``vllm-<profile name>``."""
    return f"vllm-{profile.name}"


def app_service_name(layout: Layout) -> str:
    """The compose service of ``layout``'s app: ``app-<layout name>``."""
    return f"app-{layout.name}"


def compose_up_command(layout: Layout) -> str:
    """The shell line that starts ``layout`` (from the repository root).

    Example:
        >>> compose_up_command(LAYOUTS["solo"])
        'COMPOSE_PROFILES=solo docker compose -f docker/compose.yaml up -d'
    """
    return f"COMPOSE_PROFILES={layout.name} docker compose -f {COMPOSE_FILE} up -d"


def render_dockerfile(profile: ServerProfile | None = None) -> str:
    """``docker/Dockerfile.vllm``: the pinned vLLM image serving ``profile`` by default.

    The compose services replace ``CMD`` with their own profile's arguments.
    """
    profile = profile or PROFILES["long-window"]
    timing = _HEALTH_TIMING
    return (
        _GENERATED
        + f"# The default command serves the {profile.name!r} profile.\n"
        + f"FROM {VLLM_IMAGE}\n\n"
        + f"ENV HF_HOME={_HF_CACHE} \\\n    VLLM_NO_USAGE_STATS=1\n\n"
        + f"EXPOSE {profile.port}\n\n"
        + f"HEALTHCHECK --interval={timing['interval']} --timeout={timing['timeout']} "
        + f"--start-period={timing['start_period']} --start-interval={_START_INTERVAL} "
        + f"--retries={timing['retries']} \\\n"
        + f'    CMD ["python3", "-c", "{_HEALTH_PROBE}"]\n\n'
        + 'ENTRYPOINT ["vllm", "serve"]\n'
        + f"CMD {json.dumps(profile.compose_command())}\n"
    )


def _healthy(*services: str) -> dict[str, Any]:
    return {name: {"condition": "service_healthy"} for name in services}


def _vllm_service(
    profile: ServerProfile, *, layout: Layout, host_port: int, after: tuple[str, ...] = ()
) -> dict[str, Any]:
    gpus = max(1, profile.tensor_parallel_size)
    service: dict[str, Any] = {
        "profiles": [layout.name],
        "build": {"context": ".", "dockerfile": "Dockerfile.vllm"},
        "image": "langchain-vllm-budget/vllm:" + VLLM_IMAGE.rsplit(":", 1)[1],
        "command": profile.compose_command(),
        "ipc": "host",
        "ports": [f"{host_port}:{profile.port}"],
        # vLLM reads VLLM_API_KEY as its --api-key (unset or empty: none); the app sends it.
        "environment": {
            "HF_TOKEN": "${HF_TOKEN:-}",
            settings.API_KEY.env: f"${{{settings.API_KEY.env}:-}}",
        },
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
            **_HEALTH_TIMING,
            "start_interval": _START_INTERVAL,
        },
        "restart": "unless-stopped",
    }
    if after:
        service["depends_on"] = _healthy(*after)
    return service


def app_environment(layout: Layout) -> dict[str, str]:
    """The app container's environment in ``layout``, as ``compose.yaml`` writes it.

    Settings bound to the servers are literal; :data:`APP_POLICY_SETTINGS` and
    ``VLLM_API_KEY`` read ``docker/.env`` (``${NAME:-default}``); :data:`APP_HF_ENV` is added.

    Example:
        >>> env = app_environment(LAYOUTS["summarizer"])
        >>> env["VLLM_BUDGET_SUMMARIZER_API_BASE"], env["VLLM_BUDGET_SUMMARY_MAX_TOKENS"]
        ('http://vllm-summarizer:8000/v1', '${VLLM_BUDGET_SUMMARY_MAX_TOKENS:-250}')
    """
    reasoner, *rest = layout.servers
    env = reasoner.client_env(base_url=f"http://{REASONER_HOST}:{reasoner.port}/v1")
    env[settings.API_KEY.env] = f"${{{settings.API_KEY.env}:-}}"
    for summarizer in rest:
        host = server_service_name(summarizer)
        env |= summarizer.summarizer_env(base_url=f"http://{host}:{summarizer.port}/v1")
    for name, default in _policy_defaults(reasoner).items():
        env[name] = f"${{{name}:-{default}}}"
    return env | dict(APP_HF_ENV)


def _policy_defaults(reasoner: ServerProfile) -> dict[str, str]:
    """The app's client policy for ``reasoner``: the profile's values, else the settings'."""
    client = reasoner.client_env()
    return {
        setting.env: client.get(setting.env, str(setting.required_default()))
        for setting in APP_POLICY_SETTINGS
    }


def _layout_services(layout: Layout) -> dict[str, Any]:
    services: dict[str, Any] = {}
    started: list[str] = []
    for index, profile in enumerate(layout.servers):
        name = server_service_name(profile)
        port = profile.port if index == 0 else _SUMMARIZER_HOST_PORT
        # Each server starts once the ones before it are healthy: vLLM sizes itself from the
        # GPU memory that is free when it starts.
        services[name] = _vllm_service(profile, layout=layout, host_port=port, after=tuple(started))
        if index == 0:
            services[name]["networks"] = {"default": {"aliases": [REASONER_HOST]}}
        started.append(name)
    services[app_service_name(layout)] = {
        "profiles": [layout.name],
        "build": {"context": "..", "dockerfile": "docker/Dockerfile.app"},
        "environment": app_environment(layout),
        "volumes": [f"hf-cache:{_HF_CACHE}:ro"],
        "ports": [f"{_APP_PORT}:{_APP_PORT}"],
        "depends_on": _healthy(*started),
        "restart": "unless-stopped",
    }
    return services


def render_compose() -> str:
    """``docker/compose.yaml``: each layout's vLLM server(s) and app, one compose profile each."""
    header = [
        "# One layout at a time: COMPOSE_PROFILES=<layout> (in docker/.env or the shell);",
        "# `vllm-budget plan --gpu-memory-gib N` says which one fits your GPU.",
        *(f"#   {layout.name}: {layout.description}" for layout in LAYOUTS.values()),
    ]
    services: dict[str, Any] = {}
    for layout in LAYOUTS.values():
        services |= _layout_services(layout)
    document = {
        "name": "langchain-vllm-budget",
        "services": services,
        "volumes": {"hf-cache": {}},
    }
    body: str = yaml.safe_dump(document, sort_keys=False, width=100, default_flow_style=False)
    return _GENERATED + "\n".join(header) + "\n" + body


def render_env_example() -> str:
    """``docker/.env.example``: copy to ``docker/.env``; compose reads it for its variables."""
    policy = _policy_defaults(LAYOUTS["solo"].servers[0])
    lines = [
        _GENERATED.rstrip("\n"),
        "# Copy to docker/.env; docker compose reads it.",
        "",
        f"# The layout, one at a time: {' | '.join(LAYOUTS)}.",
        "# `vllm-budget plan --gpu-memory-gib N` says which one fits your GPU.",
        "COMPOSE_PROFILES=solo",
        "# A Hugging Face token, if the models need one (the vLLM servers download them).",
        "HF_TOKEN=",
        "# An API key the vLLM servers require and the app sends (empty: none).",
        f"{settings.API_KEY.env}=",
        "",
        "# Client policy, per request (uncomment to change; these are the layouts' values).",
        "# The layout fixes what must match its servers (URLs, models, tokenizers, windows,",
        "# concurrency): change those in the profiles and run `vllm-budget profiles render`.",
        *(f"# {name}={value}" for name, value in policy.items()),
    ]
    return "\n".join(lines) + "\n"


def render_docker_files() -> dict[str, str]:
    """Every generated file of ``docker/``, by name (see :data:`DOCKER_FILES`)."""
    return {
        "Dockerfile.vllm": render_dockerfile(),
        "compose.yaml": render_compose(),
        ".env.example": render_env_example(),
    }
