"""Prompt ensembles and the shared frozen-model-with-a-prompt-table runtime (see README.md)."""
