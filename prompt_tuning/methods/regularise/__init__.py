"""Prompt regularisers and losses as model wrappers (the trainer stays untouched)."""
