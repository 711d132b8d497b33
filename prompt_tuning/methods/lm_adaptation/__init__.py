"""LM adaptation: continue a T5 1.1 checkpoint on the prefix-LM objective (see README.md)."""
