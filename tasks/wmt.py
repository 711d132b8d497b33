"""WMT translation: WMT14 En-Fr and WMT16 En-De, En-Ro, both directions, scored with BLEU.

  wmt14_enfr_v100, wmt14_fren_v100, wmt16_ende_v100, wmt16_deen_v100,
  wmt16_enro_v100, wmt16_roen_v100     "translate English to French: SENTENCE" -> translation
  mt5_<the same>                       with the mT5 vocabulary (ProMoT fine-tunes mT5 on
                                       WMT14 En-Fr)
"""
import dataclasses
from typing import Optional

import seqio

from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

# T5's prefix, lower-case as its pre-training mixture wrote it ("translate English to German: ").
TEMPLATE = "translate {source} to {target}: "
LANGUAGE_NAMES = {"en": "English", "fr": "French", "de": "German", "ro": "Romanian"}


@dataclasses.dataclass(frozen=True)
class Pair:
  year: int
  other: str  # the non-English language

  @property
  def tfds_name(self) -> str:
    return f"wmt{self.year}_translate/{self.other}-en:1.0.0"


PAIRS = (Pair(14, "fr"), Pair(16, "de"), Pair(16, "ro"))


def task_name(year: int, source: str, target: str, *, name_prefix: str = "") -> str:
  return f"{name_prefix}wmt{year}_{source}{target}_v100"


def register(*, vocabulary: Optional[seqio.Vocabulary] = None, kind: str = vocabularies.T5,
             name_prefix: str = "") -> None:
  """Registers both directions of every pair; idempotent."""
  vocabulary = vocabulary or vocabularies.get_vocabulary(kind=kind)
  for pair in PAIRS:
    source_ds = seqio.TfdsDataSource(tfds_name=pair.tfds_name,
                                     splits=("train", "validation", "test"))
    for source, target in (("en", pair.other), (pair.other, "en")):
      format_fn = preprocessors.translate(
          source=source, target=target, template=TEMPLATE,
          source_name=LANGUAGE_NAMES[source], target_name=LANGUAGE_NAMES[target])
      registry.add_task(
          task_name(pair.year, source, target, name_prefix=name_prefix),
          source=source_ds,
          preprocessors=[
              preprocessors.map_examples(format_fn),
              preprocessors.tokenize_and_append_eos,
          ],
          output_features=vocabularies.text_to_text_features(vocabulary),
          postprocess_fn=postprocessors.strip,
          metric_fns=[metrics.bleu],
      )


register()
register(kind=vocabularies.MT5, name_prefix="mt5_")
