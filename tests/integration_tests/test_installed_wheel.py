"""The package as a user installs it: the wheel in a clean virtualenv, outside the checkout.

The wheel is built from this checkout and installed into a new virtualenv (no editable
install, nothing of the repository on the path). First without extras: README examples 1-3
run as written from an empty folder against the real server, and ``vllm-budget`` says which
extra it needs. Then with the ``cli`` extra: ``vllm-budget run`` works from the empty folder,
on the pipeline that ships inside the package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration_tests.conftest import ServedModel
from tests.integration_tests.test_readme import README_MODEL, _examples

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Installed:
    """A clean virtualenv with the wheel in it, and an empty folder to run from."""

    wheel: Path
    python: Path
    bin: Path
    workdir: Path

    def env(self, served: ServedModel) -> dict[str, str]:
        """The user's environment: the server, small outputs, nothing of the checkout."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL"))}
        env.update(
            VLLM_API_BASE=served.base_url,
            VLLM_BUDGET_OUTPUT_RESERVE="48",
            VLLM_BUDGET_MIN_OUTPUT_TOKENS="16",
            PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
        )
        return env

    def run(
        self, args: list[str], served: ServedModel, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in the empty folder with the user's environment."""
        return subprocess.run(
            args,
            cwd=self.workdir,
            env=self.env(served),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pip_install(self, requirement: str) -> None:
        """``pip install requirement`` into the virtualenv (fails the test on error)."""
        done = subprocess.run(
            [str(self.python), "-m", "pip", "install", "-q", requirement],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from this checkout, installed without extras into a new virtualenv."""
    root = tmp_path_factory.mktemp("installed")
    dist = root / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("langchain_vllm_budget-*.whl")
    venv.create(root / "venv", with_pip=True)
    workdir = root / "empty"
    workdir.mkdir()
    bin_dir = root / "venv" / "bin"
    env = Installed(wheel, bin_dir / "python", bin_dir, workdir)
    env.pip_install(str(wheel))
    return env


def test_the_wheel_ships_the_library_and_no_app_folder(installed: Installed) -> None:
    import zipfile

    names = zipfile.ZipFile(installed.wheel).namelist()
    assert "langchain_vllm_budget/pipeline/graph.py" in names
    assert not [n for n in names if n.startswith(("graphs/", "tests/", "benchmarks/"))]


def test_readme_examples_run_from_the_plain_install(
    installed: Installed, request: pytest.FixtureRequest
) -> None:
    for name, (server, code) in _examples().items():
        served: ServedModel = request.getfixturevalue(server)
        script = installed.workdir / f"example_{name}.py"
        script.write_text(code.replace(README_MODEL, served.model))
        done = installed.run([str(installed.python), script.name], served)
        assert done.returncode == 0, f"example {name}:\n{done.stderr[-3000:]}"
        if name == "chat":
            assert f"do not fit {served.max_model_len}; remove" in done.stdout
        if name == "agent":
            assert done.stdout.strip().splitlines()[-1] == str(served.max_model_len - 128 - 16)
        if name == "stages":
            assert "INC-4821" in done.stdout or "triage" in done.stdout
    where = installed.run(
        [str(installed.python), "-c", "import langchain_vllm_budget as m; print(m.__file__)"],
        request.getfixturevalue("tiny_qwen"),
    )
    assert str(installed.python.parent.parent) in where.stdout  # the wheel, not the checkout


def test_the_cli_says_which_extra_it_needs_then_runs_from_an_empty_folder(
    installed: Installed, tiny_qwen: ServedModel
) -> None:
    missing = installed.run([str(installed.bin / "vllm-budget"), "--help"], tiny_qwen)
    assert missing.returncode == 2
    assert "pip install 'langchain-vllm-budget[cli]'" in missing.stderr

    installed.pip_install(f"{installed.wheel}[cli]")
    done = installed.run(
        [
            str(installed.bin / "vllm-budget"),
            "run",
            "Fix INC-77 in /etc/app.yaml: pool_timeout=30s",
            "--base-url",
            tiny_qwen.base_url,
            "--model",
            tiny_qwen.model,
            "--thread-id",
            "wheel-1",
        ],
        tiny_qwen,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for stage in ("classify", "select", "plan", "execute"):
        assert stage in done.stdout
    assert list(installed.workdir.rglob("*.sqlite")), "the run was not checkpointed"
