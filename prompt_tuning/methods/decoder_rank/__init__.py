"""Decoder-only prompt tuning on SuperGLUE, evaluated by rank classification (see README.md)."""
