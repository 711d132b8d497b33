"""Frozen reader for open-domain QA: a passage re-ranker, cross-fitting, packed-context tuning."""
