"""One reader per checkpoint format; `prompt_tuning.engine.checkpoint_import` picks among them."""
