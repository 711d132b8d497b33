"""Flax T5-family encoder-decoder and decoder-only models with an input-embedding hook."""
from prompt_tuning.models.config import ModelConfig, get_config, preset_names
from prompt_tuning.models.decoder_only import DecoderOnly, LMOutput, init_decoder_only_cache
from prompt_tuning.models.t5 import EncoderDecoder, init_decoder_cache
