"""The parameter groups of an ID-PT run: what is trained, what is frozen, where it comes from.

  generator      input_hook/ minus the small encoder: trained, from initialisers (or an earlier
                 export), exported as `group_exports/checkpoint_<step>/generator.npz`;
  small_encoder  input_hook/small_encoder/: frozen, read from its own T5 checkpoint, whose
                 names are `encoder/...` and `token_embedder/...` (T5X, orbax, Hugging Face or a
                 step of a run of this project);
  model          everything else (the LM): frozen, read from the run's base checkpoint.
"""
from __future__ import annotations

from typing import List, Optional

from prompt_tuning.engine import params
from prompt_tuning.methods.idpt.generator import SMALL_ENCODER

HOOK = "input_hook/"
SMALL_ENCODER_PREFIX = f"{HOOK}{SMALL_ENCODER}/"
GENERATOR_PATTERN = rf"^{HOOK}(?!{SMALL_ENCODER}/)"
SMALL_ENCODER_PATTERN = rf"^{SMALL_ENCODER_PREFIX}"
# Our names -> a T5 checkpoint's names.
SMALL_ENCODER_PREFIX_MAP = ((f"{SMALL_ENCODER_PREFIX}encoder/", "encoder/"),
                            (f"{SMALL_ENCODER_PREFIX}token_embedder/", "token_embedder/"))


def idpt_groups(encoder_checkpoint: str, *, encoder_format: str = "auto",
                generator_npz: Optional[str] = None, train_generator: bool = True,
                generator_optimizer=None) -> List[params.ParamGroup]:
  """The three groups above.

  Args:
    encoder_checkpoint: the small encoder's T5 checkpoint (read through the prefix map).
    encoder_format: its format ('auto', 't5x', 'orbax' or 'hf').
    generator_npz: an exported `generator.npz` to start from (or to evaluate) instead of the
      initialisers.
    train_generator: False freezes the generator too (evaluation and inference).
    generator_optimizer: an optax transformation for the generator alone (None: the run's).
  """
  if not encoder_checkpoint:
    raise ValueError("idpt_groups needs the small encoder's checkpoint path.")
  source = params.FromNpy(generator_npz) if generator_npz else params.FromInit()
  return [
      params.ParamGroup(name="generator", pattern=GENERATOR_PATTERN, trainable=train_generator,
                        source=source, export="npz" if train_generator else None,
                        optimizer=generator_optimizer if train_generator else None),
      params.ParamGroup(name="small_encoder", pattern=SMALL_ENCODER_PATTERN,
                        source=params.FromCheckpoint(path=encoder_checkpoint,
                                                     format=encoder_format,
                                                     prefix_map=SMALL_ENCODER_PREFIX_MAP)),
      params.ParamGroup(name="model", pattern=None, source=params.FromBase()),
  ]
