"""``python -m langchain_vllm_budget.cli``: the ``vllm-budget`` command."""

from langchain_vllm_budget.cli import main

main()
