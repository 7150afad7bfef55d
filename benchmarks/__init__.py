"""Benchmarks of langchain-vllm-budget against the alternatives, on a real vLLM server.

Run them all with ``make bench`` (``python -m benchmarks.run``); results go to
``benchmarks/results/`` as JSON, a Markdown summary and PNG plots.
"""
