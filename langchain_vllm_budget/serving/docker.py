"""The ``docker/`` files, rendered from the server profiles and layouts.

``vllm-budget profiles render`` writes them; a unit test checks that the committed files are
what the profiles render, and validates ``compose.yaml`` with Docker Compose itself.

``compose.yaml`` has compose profiles for each layout of
:data:`~langchain_vllm_budget.serving.profiles.LAYOUTS` (one at a time):

* ``<layout>`` (``solo``, ``balanced``, ``summarizer``): the layout's vLLM servers, PostgreSQL,
  and ``app-<layout>``, the package's runner (``vllm-budget run``) checkpointing every thread,
  stage summary and raw stage output in PostgreSQL (a named volume: they outlive the
  containers). It is a one-off job (``docker compose run --rm app-solo "request"``), so ``up``
  starts only the servers.
* ``<layout>-server``: the same servers behind LangGraph's Agent Server (the production
  server: PostgreSQL for threads, runs and the store, Redis for its task queue), with the
  app's key (:mod:`langchain_vllm_budget.serving.auth`) asked of every caller.
* ``<layout>-replicas`` (single-server layouts): :data:`DEFAULT_REPLICAS` copies of the
  layout's server, one per GPU (``device_ids``), behind ``vllm-router``; the runner talks to
  the router.

Each app service's environment holds the package's settings
(:mod:`langchain_vllm_budget.settings`) for exactly its servers:

* server-bound settings are fixed by the layout (URLs, models, tokenizers, windows,
  concurrency): they cannot drift from the ``vllm serve`` arguments beside them;
* client policy (output reserve, safety margin, minimum output, summary cap) defaults to the
  profile's value and may be overridden from ``docker/.env``.

Nothing is open by default: every published port binds to ``127.0.0.1`` unless the operator
sets ``BIND_ADDRESS``; the vLLM servers require ``VLLM_API_KEY`` (compose refuses to start
without it) and the apps send it; PostgreSQL requires ``POSTGRES_PASSWORD`` and publishes no
port; the Agent Server lets in only callers with ``VLLM_BUDGET_APP_API_KEY``.

Start order: a layout's summarizer starts once its reasoner is healthy (vLLM checks at
start-up that its ``--gpu-memory-utilization`` share of the GPU is free, and profiles memory
while loading), and the app once every server and its database are healthy. The app reads the
servers' Hugging Face cache read-only, with ``HF_HUB_OFFLINE=1``, so it counts tokens with the
models' own tokenizers locally instead of a ``/tokenize`` round trip per count.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from langchain_vllm_budget import settings
from langchain_vllm_budget.serving.planner import VLLM_IMAGE
from langchain_vllm_budget.serving.profiles import LAYOUTS, PROFILES, Layout, ServerProfile

__all__ = [
    "AGENT_SERVER_IMAGE",
    "APP_HF_ENV",
    "APP_POLICY_SETTINGS",
    "BIND_ADDRESS_VAR",
    "COMPOSE_FILE",
    "DEFAULT_REPLICAS",
    "DOCKER_FILES",
    "LANGGRAPH_JSON",
    "POSTGRES_IMAGE",
    "POSTGRES_SERVICE",
    "REASONER_HOST",
    "REDIS_IMAGE",
    "REDIS_SERVICE",
    "ROUTER_POLICIES",
    "ROUTER_POLICY_VAR",
    "VLLM_ROUTER_VERSION",
    "agent_server_service_name",
    "app_environment",
    "app_service_name",
    "compose_up_command",
    "render_app_dockerfile",
    "render_compose",
    "render_docker_files",
    "render_dockerfile",
    "render_env_example",
    "render_router_dockerfile",
    "render_server_dockerfile",
    "replica_layouts",
    "replica_service_name",
    "replica_service_names",
    "replicas_profile",
    "router_service_name",
    "server_profile",
    "server_service_name",
]

DOCKER_FILES = (
    "Dockerfile.vllm",
    "Dockerfile.app",
    "Dockerfile.server",
    "Dockerfile.router",
    "compose.yaml",
    ".env.example",
)
"""The files of ``docker/`` that :func:`render_docker_files` writes."""

COMPOSE_FILE = "docker/compose.yaml"
"""The compose file, relative to the repository root."""

REASONER_HOST = "vllm"
"""The network alias of every layout's reasoner: the app's URL is the same in all layouts."""

DEFAULT_REPLICAS = 2
"""vLLM replicas (GPUs) of a ``<layout>-replicas`` compose profile in the committed file."""

POSTGRES_IMAGE = "postgres:16.6-bookworm"
"""PostgreSQL for the runner's checkpoints and store, and the Agent Server's database."""
REDIS_IMAGE = "redis:7.4.1-bookworm"
"""Redis, the Agent Server's task queue and stream broker."""
AGENT_SERVER_IMAGE = "langchain/langgraph-api:3.11"
"""LangGraph's Agent Server base image (what ``langgraph build`` builds on), Python 3.11."""
VLLM_ROUTER_VERSION = "0.1.17"
"""The ``vllm-router`` release the router image installs."""

POSTGRES_SERVICE = "postgres"
REDIS_SERVICE = "redis"
BIND_ADDRESS_VAR = "BIND_ADDRESS"
"""The compose variable of the host address every published port binds to (default
``127.0.0.1``: only this machine; ``0.0.0.0`` opts in to every interface)."""
ROUTER_POLICY_VAR = "VLLM_ROUTER_POLICY"
"""The compose variable of ``vllm-router --policy`` (default ``consistent_hash``)."""
ROUTER_POLICIES = ("consistent_hash", "round_robin", "cache_aware")
"""The routing policies ``docs/deployment.md`` compares (``vllm-router`` has more)."""

LANGGRAPH_JSON = Path(__file__).resolve().parents[2] / "langgraph.json"
"""The project's ``langgraph.json`` (graphs and auth), which the server image is built from."""

_HF_CACHE = "/root/.cache/huggingface"
_SUMMARIZER_HOST_PORT = 8001
_SERVER_HOST_PORT = 8123
_SERVER_PORT = 8000
_ROUTER_PORT = 8000
_PG_USER = "budget"
_PG_DB = "budget"
_AGENT_DB = "agent_server"
_PROJECT_DIR = "/deps/langchain-vllm-budget"
_INITDB_CONFIG = "agent-server-database"

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

# Compose refuses every command while a required variable is unset (`${NAME:?message}`).
_API_KEY = f"${{{settings.API_KEY.env}:?set {settings.API_KEY.env} in docker/.env}}"
_PG_PASSWORD = "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in docker/.env}"
_BIND = f"${{{BIND_ADDRESS_VAR}:-127.0.0.1}}"


def _dsn(database: str) -> str:
    return f"postgresql://{_PG_USER}:{_PG_PASSWORD}@{POSTGRES_SERVICE}:5432/{database}"


def _published(host_port: int, container_port: int) -> str:
    """A published port bound to ``BIND_ADDRESS`` (``127.0.0.1`` unless the operator opts out)."""
    return f"{_BIND}:{host_port}:{container_port}"


def server_service_name(profile: ServerProfile) -> str:
    """The compose service that runs ``profile``: ``vllm-<profile name>``."""
    return f"vllm-{profile.name}"


def app_service_name(layout: Layout) -> str:
    """The compose service of ``layout``'s runner: ``app-<layout name>``."""
    return f"app-{layout.name}"


def server_profile(layout: Layout) -> str:
    """The compose profile of ``layout`` behind the Agent Server: ``<layout>-server``."""
    return f"{layout.name}-server"


def agent_server_service_name(layout: Layout) -> str:
    """The compose service of ``layout``'s Agent Server: ``agent-server-<layout>``."""
    return f"agent-server-{layout.name}"


def replica_layouts() -> tuple[Layout, ...]:
    """The layouts that scale out as replicas: those with one server per GPU."""
    return tuple(layout for layout in LAYOUTS.values() if layout.summarizer is None)


def replicas_profile(layout: Layout) -> str:
    """The compose profile of ``layout``'s replicas behind the router: ``<layout>-replicas``."""
    return f"{layout.name}-replicas"


def replica_service_name(layout: Layout, index: int) -> str:
    """The compose service of replica ``index`` (GPU ``index``): ``vllm-<layout>-<index>``."""
    return f"vllm-{layout.name}-{index}"


def router_service_name(layout: Layout) -> str:
    """The compose service of the router in front of ``layout``'s replicas."""
    return f"router-{layout.name}"


def compose_up_command(layout: Layout, *, replicas: int = 1) -> str:
    """The shell line that starts ``layout``'s servers (from the repository root).

    Args:
        layout: The layout.
        replicas: More than 1: its ``<layout>-replicas`` profile.

    Example:
        >>> compose_up_command(LAYOUTS["solo"])
        'COMPOSE_PROFILES=solo docker compose -f docker/compose.yaml up -d'
        >>> compose_up_command(LAYOUTS["solo"], replicas=2)
        'COMPOSE_PROFILES=solo-replicas docker compose -f docker/compose.yaml up -d'
    """
    profile = replicas_profile(layout) if replicas > 1 else layout.name
    return f"COMPOSE_PROFILES={profile} docker compose -f {COMPOSE_FILE} up -d"


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


def render_app_dockerfile() -> str:
    """``docker/Dockerfile.app``: the package's runner (``vllm-budget run``), PostgreSQL-ready."""
    return (
        _GENERATED
        + '# The runner: `docker compose run --rm app-<layout> "request"` runs the pipeline of\n'
        + "# langgraph.json; VLLM_BUDGET_CHECKPOINTER_DSN keeps threads, checkpoints and raw\n"
        + "# stage outputs in PostgreSQL; `--thread-id T` without a request resumes thread T.\n"
        + "# Offline Hugging Face: tokenizers load from the vLLM servers' cache (read-only).\n"
        + "FROM python:3.11.11-slim-bookworm\n\n"
        + "ENV PYTHONDONTWRITEBYTECODE=1 \\\n    PYTHONUNBUFFERED=1 \\\n"
        + f"    PIP_NO_CACHE_DIR=1 \\\n    HF_HOME={_HF_CACHE} \\\n    HF_HUB_OFFLINE=1\n\n"
        + "WORKDIR /app\n"
        + "COPY pyproject.toml README.md langgraph.json ./\n"
        + "COPY langchain_vllm_budget ./langchain_vllm_budget\n"
        + "COPY graphs ./graphs\n"
        + "# The project installs from its own source; its pins live in pyproject.toml.\n"
        + "# hadolint ignore=DL3013\n"
        + 'RUN pip install --no-cache-dir ".[cli,postgres]"\n\n'
        + 'ENTRYPOINT ["vllm-budget", "run"]\n'
    )


def render_server_dockerfile() -> str:
    """``docker/Dockerfile.server``: the pipeline on LangGraph's Agent Server image.

    What ``langgraph build`` writes for ``langgraph.json`` (graphs and auth as the image's
    ``LANGSERVE_GRAPHS`` / ``LANGGRAPH_AUTH``), kept here so compose builds it without the CLI.
    """
    config = json.loads(LANGGRAPH_JSON.read_text())
    graphs = {
        name: f"{_PROJECT_DIR}/{path.removeprefix('./')}" for name, path in config["graphs"].items()
    }
    auth = {"path": f"{_PROJECT_DIR}/{config['auth']['path'].removeprefix('./')}"}
    return (
        _GENERATED
        + "# LangGraph's Agent Server with the pipeline: PostgreSQL (DATABASE_URI) and Redis\n"
        + "# (REDIS_URI) from compose; LANGSMITH_API_KEY or LANGGRAPH_CLOUD_LICENSE_KEY lets it\n"
        + "# start; every caller needs VLLM_BUDGET_APP_API_KEY (x-api-key).\n"
        + f"FROM {AGENT_SERVER_IMAGE}\n\n"
        + f"ENV HF_HOME={_HF_CACHE} \\\n    HF_HUB_OFFLINE=1\n\n"
        + f"COPY pyproject.toml README.md langgraph.json {_PROJECT_DIR}/\n"
        + f"COPY langchain_vllm_budget {_PROJECT_DIR}/langchain_vllm_budget\n"
        + f"COPY graphs {_PROJECT_DIR}/graphs\n"
        + "# Installed against the server's own constraints, as `langgraph build` does.\n"
        + "RUN PYTHONDONTWRITEBYTECODE=1 uv pip install --system --no-cache-dir "
        + f"-c /api/constraints.txt -e {_PROJECT_DIR}\n\n"
        + f"ENV LANGSERVE_GRAPHS='{json.dumps(graphs)}' \\\n"
        + f"    LANGGRAPH_AUTH='{json.dumps(auth)}'\n\n"
        + f"WORKDIR {_PROJECT_DIR}\n"
    )


def render_router_dockerfile() -> str:
    """``docker/Dockerfile.router``: ``vllm-router`` (a binary wheel), pinned."""
    return (
        _GENERATED
        + "# vllm-router in front of the vLLM replicas; compose gives it --worker-urls, --policy.\n"
        + "FROM python:3.11.11-slim-bookworm\n\n"
        + "ENV PIP_NO_CACHE_DIR=1\n"
        + f'RUN pip install --no-cache-dir "vllm-router=={VLLM_ROUTER_VERSION}"\n\n'
        + f"EXPOSE {_ROUTER_PORT}\n"
        + 'ENTRYPOINT ["vllm-router"]\n'
    )


def _healthy(*services: str) -> dict[str, Any]:
    return {name: {"condition": "service_healthy"} for name in services}


def _gpus(count: int | None = None, device_ids: list[str] | None = None) -> dict[str, Any]:
    device: dict[str, Any] = {"driver": "nvidia"}
    if device_ids is not None:
        device["device_ids"] = device_ids
    else:
        device["count"] = count
    device["capabilities"] = ["gpu"]
    return {"resources": {"reservations": {"devices": [device]}}}


def _vllm_service(
    profile: ServerProfile,
    *,
    profiles: list[str],
    host_port: int | None,
    after: tuple[str, ...] = (),
    device_ids: list[str] | None = None,
) -> dict[str, Any]:
    service: dict[str, Any] = {
        "profiles": profiles,
        "build": {"context": ".", "dockerfile": "Dockerfile.vllm"},
        "image": "langchain-vllm-budget/vllm:" + VLLM_IMAGE.rsplit(":", 1)[1],
        "command": profile.compose_command(),
        "ipc": "host",
    }
    if host_port is not None:
        service["ports"] = [_published(host_port, profile.port)]
    service |= {
        # vLLM reads VLLM_API_KEY as its --api-key: every /v1 request must carry it.
        "environment": {"HF_TOKEN": "${HF_TOKEN:-}", settings.API_KEY.env: _API_KEY},
        "volumes": [f"hf-cache:{_HF_CACHE}"],
        "deploy": _gpus(max(1, profile.tensor_parallel_size), device_ids),
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


def app_environment(
    layout: Layout, *, base_url: str | None = None, max_concurrency: int | None = None
) -> dict[str, str]:
    """The app container's environment in ``layout``, as ``compose.yaml`` writes it.

    Settings bound to the servers are literal; :data:`APP_POLICY_SETTINGS` read
    ``docker/.env`` (``${NAME:-default}``); ``VLLM_API_KEY`` is required; :data:`APP_HF_ENV`
    is added.

    Args:
        layout: The layout.
        base_url: The reasoner's URL as the app reaches it (default: the ``vllm`` alias);
            a router in front of replicas.
        max_concurrency: Requests in flight over all replicas (default: the reasoner's
            ``--max-num-seqs``).

    Example:
        >>> env = app_environment(LAYOUTS["summarizer"])
        >>> env["VLLM_BUDGET_SUMMARIZER_API_BASE"], env["VLLM_BUDGET_SUMMARY_MAX_TOKENS"]
        ('http://vllm-summarizer:8000/v1', '${VLLM_BUDGET_SUMMARY_MAX_TOKENS:-250}')
    """
    reasoner, *rest = layout.servers
    env = reasoner.client_env(base_url=base_url or f"http://{REASONER_HOST}:{reasoner.port}/v1")
    if max_concurrency is not None:
        env[settings.MAX_CONCURRENCY.env] = str(max_concurrency)
    env[settings.API_KEY.env] = _API_KEY
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


def _runner(profile: str, env: dict[str, str], after: list[str]) -> dict[str, Any]:
    """The package's runner on PostgreSQL: a one-off job (``docker compose run``)."""
    return {
        "profiles": [profile],
        "build": {"context": "..", "dockerfile": "docker/Dockerfile.app"},
        "environment": env | {settings.CHECKPOINTER_DSN.env: _dsn(_PG_DB)},
        "volumes": [f"hf-cache:{_HF_CACHE}:ro"],
        "depends_on": _healthy(*after, POSTGRES_SERVICE),
        # `up` leaves it out; `docker compose run --rm app-<layout> "request"` runs it.
        "scale": 0,
    }


def _agent_server(profile: str, env: dict[str, str], after: list[str]) -> dict[str, Any]:
    """LangGraph's Agent Server with the pipeline, on PostgreSQL and Redis, behind the key."""
    return {
        "profiles": [profile],
        "build": {"context": "..", "dockerfile": "docker/Dockerfile.server"},
        "environment": env
        | {
            "DATABASE_URI": _dsn(_AGENT_DB),
            "REDIS_URI": f"redis://{REDIS_SERVICE}:6379",
            # One of the two lets the server start (LangSmith account or licence).
            "LANGSMITH_API_KEY": "${LANGSMITH_API_KEY:-}",
            "LANGGRAPH_CLOUD_LICENSE_KEY": "${LANGGRAPH_CLOUD_LICENSE_KEY:-}",
            # Unset: the server lets no one in (serving/auth.py).
            settings.APP_API_KEY.env: f"${{{settings.APP_API_KEY.env}:-}}",
        },
        "volumes": [f"hf-cache:{_HF_CACHE}:ro"],
        "ports": [_published(_SERVER_HOST_PORT, _SERVER_PORT)],
        "depends_on": _healthy(*after, POSTGRES_SERVICE, REDIS_SERVICE),
        "healthcheck": {
            "test": ["CMD", "python", "/api/healthcheck.py"],
            "interval": "30s",
            "timeout": "5s",
            "retries": 5,
            "start_period": "60s",
            "start_interval": _START_INTERVAL,
        },
        "restart": "unless-stopped",
    }


def _layout_services(layout: Layout) -> dict[str, Any]:
    profiles = [layout.name, server_profile(layout)]
    services: dict[str, Any] = {}
    started: list[str] = []
    for index, profile in enumerate(layout.servers):
        name = server_service_name(profile)
        port = profile.port if index == 0 else _SUMMARIZER_HOST_PORT
        # Each server starts once the ones before it are healthy: vLLM sizes itself from the
        # GPU memory that is free when it starts.
        services[name] = _vllm_service(
            profile, profiles=profiles, host_port=port, after=tuple(started)
        )
        if index == 0:
            services[name]["networks"] = {"default": {"aliases": [REASONER_HOST]}}
        started.append(name)
    env = app_environment(layout)
    services[app_service_name(layout)] = _runner(layout.name, env, started)
    services[agent_server_service_name(layout)] = _agent_server(
        server_profile(layout), env, started
    )
    return services


def _replica_services(layout: Layout, replicas: int) -> dict[str, Any]:
    """``replicas`` copies of ``layout``'s server, one per GPU, behind ``vllm-router``."""
    (profile,) = layout.servers
    name = replicas_profile(layout)
    services: dict[str, Any] = {}
    workers = []
    for index in range(replicas):
        service = replica_service_name(layout, index)
        services[service] = _vllm_service(
            profile, profiles=[name], host_port=None, device_ids=[str(index)]
        )
        workers.append(f"http://{service}:{profile.port}")
    router = router_service_name(layout)
    services[router] = {
        "profiles": [name],
        "build": {"context": ".", "dockerfile": "Dockerfile.router"},
        "image": f"langchain-vllm-budget/vllm-router:{VLLM_ROUTER_VERSION}",
        "command": [
            "--host",
            "0.0.0.0",
            "--port",
            str(_ROUTER_PORT),
            "--policy",
            f"${{{ROUTER_POLICY_VAR}:-consistent_hash}}",
            # Sent to the replicas (which require it); clients send their own, passed through.
            "--api-key",
            _API_KEY,
            "--worker-urls",
            *workers,
        ],
        "ports": [_published(profile.port, _ROUTER_PORT)],
        "depends_on": _healthy(*replica_service_names(layout, replicas)),
        "restart": "unless-stopped",
    }
    env = app_environment(
        layout,
        base_url=f"http://{router}:{_ROUTER_PORT}/v1",
        max_concurrency=replicas * profile.max_num_seqs,
    )
    services[f"app-{name}"] = _runner(name, env, [])
    services[f"app-{name}"]["depends_on"] = {
        router: {"condition": "service_started"},
        **_healthy(POSTGRES_SERVICE),
    }
    return services


def replica_service_names(layout: Layout, replicas: int) -> list[str]:
    """The replica services of ``layout``'s ``<layout>-replicas`` profile, in GPU order."""
    return [replica_service_name(layout, index) for index in range(replicas)]


def _all_profiles() -> list[str]:
    names: list[str] = []
    for layout in LAYOUTS.values():
        names += [layout.name, server_profile(layout)]
    names += [replicas_profile(layout) for layout in replica_layouts()]
    return names


def _database_services() -> dict[str, Any]:
    return {
        POSTGRES_SERVICE: {
            "profiles": _all_profiles(),
            "image": POSTGRES_IMAGE,
            "environment": {
                "POSTGRES_USER": _PG_USER,
                "POSTGRES_DB": _PG_DB,
                "POSTGRES_PASSWORD": _PG_PASSWORD,
            },
            # No published port: only the app services reach it, on the compose network.
            "volumes": ["pg-data:/var/lib/postgresql/data"],
            # Run once, on a new volume: the Agent Server's own database beside the runner's,
            # so the two never share tables.
            "configs": [
                {"source": _INITDB_CONFIG, "target": "/docker-entrypoint-initdb.d/agent-server.sql"}
            ],
            "healthcheck": {
                "test": ["CMD", "pg_isready", "-U", _PG_USER, "-d", _PG_DB],
                "interval": "10s",
                "timeout": "5s",
                "retries": 5,
                "start_period": "30s",
                "start_interval": "1s",
            },
            "restart": "unless-stopped",
        },
        REDIS_SERVICE: {
            "profiles": [server_profile(layout) for layout in LAYOUTS.values()],
            "image": REDIS_IMAGE,
            "healthcheck": {
                "test": ["CMD", "redis-cli", "ping"],
                "interval": "10s",
                "timeout": "5s",
                "retries": 5,
                "start_interval": "1s",
            },
            "restart": "unless-stopped",
        },
    }


def render_compose(*, replicas: int = DEFAULT_REPLICAS) -> str:
    """``docker/compose.yaml``: every layout's servers, database and apps, by compose profile.

    Args:
        replicas: vLLM replicas (GPUs) of each ``<layout>-replicas`` profile.

    Raises:
        ValueError: ``replicas`` below 2.
    """
    if replicas < 2:
        msg = f"replicas must be at least 2 (one server is the plain layout), got {replicas}"
        raise ValueError(msg)
    header = [
        "# One compose profile at a time: COMPOSE_PROFILES=<profile> (docker/.env or the shell);",
        "# `vllm-budget plan --gpu-memory-gib N [--replicas R]` says which one fits your GPUs.",
        *(f"#   {layout.name}: {layout.description}" for layout in LAYOUTS.values()),
        "#   <layout>-server: the same servers behind LangGraph's Agent Server (port 8123).",
        f"#   <layout>-replicas: {replicas} replicas of a one-server layout, one per GPU, behind "
        "vllm-router.",
        '# Runs: docker compose -f docker/compose.yaml run --rm app-<profile> "request"',
    ]
    services: dict[str, Any] = {}
    for layout in LAYOUTS.values():
        services |= _layout_services(layout)
    for layout in replica_layouts():
        services |= _replica_services(layout, replicas)
    services |= _database_services()
    document = {
        "name": "langchain-vllm-budget",
        "services": services,
        "volumes": {"hf-cache": {}, "pg-data": {}},
        "configs": {
            _INITDB_CONFIG: {"content": f"CREATE DATABASE {_AGENT_DB} OWNER {_PG_USER};\n"}
        },
    }
    body: str = yaml.safe_dump(document, sort_keys=False, width=100, default_flow_style=False)
    return _GENERATED + "\n".join(header) + "\n" + body


def render_env_example() -> str:
    """``docker/.env.example``: copy to ``docker/.env``; compose reads it for its variables."""
    policy = _policy_defaults(LAYOUTS["solo"].servers[0])
    profiles = [*LAYOUTS, *(server_profile(layout) for layout in LAYOUTS.values())]
    profiles += [replicas_profile(layout) for layout in replica_layouts()]
    lines = [
        _GENERATED.rstrip("\n"),
        "# Copy to docker/.env; docker compose reads it.",
        "",
        f"# The compose profile, one at a time: {' | '.join(profiles)}.",
        "# `vllm-budget plan --gpu-memory-gib N [--replicas R]` says which one fits your GPUs.",
        "COMPOSE_PROFILES=solo",
        "",
        "# Required (compose refuses to start without them), e.g. `openssl rand -hex 32`:",
        "# the key the vLLM servers require and the apps send,",
        f"{settings.API_KEY.env}=",
        "# the password of the PostgreSQL that keeps threads, checkpoints and raw outputs.",
        "POSTGRES_PASSWORD=",
        "",
        "# The Agent Server (<layout>-server) lets in only callers with this key (x-api-key);",
        "# unset, it lets no one in. It needs one of the two LangChain keys to start.",
        f"{settings.APP_API_KEY.env}=",
        "LANGSMITH_API_KEY=",
        "LANGGRAPH_CLOUD_LICENSE_KEY=",
        "",
        "# The host address published ports bind to: 127.0.0.1 (this machine only) unless you",
        "# opt in to more, e.g. 0.0.0.0 for every interface.",
        f"{BIND_ADDRESS_VAR}=127.0.0.1",
        "# The router's policy in the <layout>-replicas profiles (see docs/deployment.md):",
        f"# {' | '.join(ROUTER_POLICIES)}.",
        f"{ROUTER_POLICY_VAR}=consistent_hash",
        "# A Hugging Face token, if the models need one (the vLLM servers download them).",
        "HF_TOKEN=",
        "",
        "# Client policy, per request (uncomment to change; these are the layouts' values).",
        "# The layout fixes what must match its servers (URLs, models, tokenizers, windows,",
        "# concurrency): change those in the profiles and run `vllm-budget profiles render`.",
        *(f"# {name}={value}" for name, value in policy.items()),
    ]
    return "\n".join(lines) + "\n"


def render_docker_files(*, replicas: int = DEFAULT_REPLICAS) -> dict[str, str]:
    """Every generated file of ``docker/``, by name (see :data:`DOCKER_FILES`).

    Args:
        replicas: vLLM replicas (GPUs) of each ``<layout>-replicas`` profile.
    """
    return {
        "Dockerfile.vllm": render_dockerfile(),
        "Dockerfile.app": render_app_dockerfile(),
        "Dockerfile.server": render_server_dockerfile(),
        "Dockerfile.router": render_router_dockerfile(),
        "compose.yaml": render_compose(replicas=replicas),
        ".env.example": render_env_example(),
    }
