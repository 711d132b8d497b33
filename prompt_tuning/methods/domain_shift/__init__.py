"""Domain shift: prompt tuning against model tuning, trained in one domain, evaluated zero-shot
in others (see README.md)."""
