"""prompt_tuning: adapt huge frozen language models with small learned modules, in JAX/Flax."""

__version__ = "0.1.0"
