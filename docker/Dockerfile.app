# The LangGraph app: the pipeline graph behind the LangGraph CLI's in-memory API server.
# Built by each layout's app service: docker compose -f docker/compose.yaml --profile solo build
# Offline Hugging Face: tokenizers load from the vLLM servers' cache (mounted read-only by
# compose, VLLM_BUDGET_TOKENIZER names the model); nothing is downloaded at run time.
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
# The project installs from its own source; its dependency pins live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[postgres]" "langgraph-cli[inmem]==0.4.*"

EXPOSE 2024
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:2024/ok')"]
CMD ["langgraph", "dev", "--host", "0.0.0.0", "--port", "2024", "--no-browser", "--no-reload"]
