"""The tiny Hugging Face tokenizer the `lm_` task tests read (trained here, no files needed)."""
import json
from typing import Any, NamedTuple

import pytest

CORPUS = ["rte hypothesis: A cat sat. premise: The cat sat.", "entailment not_entailment",
          "Dogs bark. Cats bark.", "cb hypothesis premise contradiction neutral"] * 20


class TokenizerJson(NamedTuple):
  path: str  # the tokenizer.json
  tokenizer: Any  # the `tokenizers.Tokenizer` saved there
  eos: int  # the end-of-text token's id


@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory) -> TokenizerJson:
  """A byte-level BPE `tokenizer.json` (as Llama 3 and Qwen2 ship) whose id 0 is the real token
  "!", with an end-of-text token, and the config.json beside it that names that token's id as
  EOS (a Hugging Face checkpoint folder's layout)."""
  tokenizers = pytest.importorskip("tokenizers", reason="tokenizer.json files need `tokenizers`")
  folder = tmp_path_factory.mktemp("hf_tokenizer")
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=["!", "<|end_of_text|>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(CORPUS, trainer=trainer)
  path = folder / "tokenizer.json"
  tokenizer.save(str(path))
  eos = tokenizer.token_to_id("<|end_of_text|>")
  (folder / "config.json").write_text(json.dumps({"eos_token_id": [eos, eos + 1]}))
  return TokenizerJson(str(path), tokenizer, eos)
