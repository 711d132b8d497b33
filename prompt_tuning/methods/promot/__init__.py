"""ProMoT: prompt tuning, then model tuning with the prompt frozen (see README.md)."""
