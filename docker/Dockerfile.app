# Generated from langchain_vllm_budget/serving/profiles.py by `vllm-budget profiles render`:
# change the profiles and render again rather than editing this file.
# The runner: `docker compose run --rm app-<layout> "request"` runs the pipeline of
# langgraph.json; VLLM_BUDGET_CHECKPOINTER_DSN keeps threads, checkpoints and raw
# stage outputs in PostgreSQL; `--thread-id T` without a request resumes thread T.
# Offline Hugging Face: tokenizers load from the vLLM servers' cache (read-only).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/root/.cache/huggingface \
    HF_HUB_OFFLINE=1

WORKDIR /app
COPY pyproject.toml README.md langgraph.json ./
COPY langchain_vllm_budget ./langchain_vllm_budget
COPY graphs ./graphs
# The project installs from its own source; its pins live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[cli,postgres]"

ENTRYPOINT ["vllm-budget", "run"]
