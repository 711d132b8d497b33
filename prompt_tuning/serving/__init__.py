"""Serving many tasks from one frozen model: micro-batching and request handling (see serve.py)."""
