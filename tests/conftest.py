"""Suite-wide set-up that must happen before any test module imports the task registries.

Tasks register their vocabulary when `tasks` is first imported, whichever test folder does it
first; pointing the vocabulary at the real T5 SentencePiece model in `tests/fixtures/` here
keeps every test offline and the registrations identical across folders.
"""
import os
import pathlib

_FIXTURE_VOCAB = (pathlib.Path(__file__).resolve().parent / "fixtures" /
                  "t5x_reference" / "t5_vocab")
if _FIXTURE_VOCAB.exists():
  os.environ.setdefault("PROMPT_TUNING_VOCAB", str(_FIXTURE_VOCAB))
  os.environ.setdefault("PROMPT_TUNING_MT5_VOCAB", str(_FIXTURE_VOCAB))
