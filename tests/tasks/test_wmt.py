"""WMT translation tasks: template, both directions, BLEU."""
import pytest
import seqio

from prompt_tuning.data import testing
from tasks import wmt

EXAMPLES = {
    "wmt14_translate/fr-en": {"validation": [
        {"en": "The house is small.", "fr": "La maison est petite."},
        {"en": "I like cats.", "fr": "J'aime les chats."}]},
    "wmt16_translate/de-en": {"validation": [
        {"en": "Good morning.", "de": "Guten Morgen."}]},
}


@pytest.fixture
def mocked(tfds_dir):
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES):
    yield


def test_all_pairs_and_directions_are_registered():
  names = set(seqio.TaskRegistry.names())
  for prefix in ("", "mt5_"):
    for year, pair in ((14, "enfr"), (14, "fren"), (16, "ende"), (16, "deen"), (16, "enro"),
                       (16, "roen")):
      assert f"{prefix}wmt{year}_{pair}_v100" in names


def test_translation_template_in_both_directions(mocked):
  en_fr = testing.process("wmt14_enfr_v100", split="validation")
  assert [(r["inputs_pretokenized"], r["targets_pretokenized"]) for r in en_fr] == [
      ("translate English to French: The house is small.", "La maison est petite."),
      ("translate English to French: I like cats.", "J'aime les chats.")]
  de_en = testing.process("wmt16_deen_v100", split="validation")
  assert [(r["inputs_pretokenized"], r["targets_pretokenized"]) for r in de_en] == [
      ("translate German to English: Guten Morgen.", "Good morning.")]


def test_bleu_is_100_for_exact_and_lower_for_partial(mocked):
  rows = testing.process("wmt14_enfr_v100", split="validation")
  exact = testing.score_predictions("wmt14_enfr_v100", rows,
                                    predictions=["La maison est petite.", "J'aime les chats."])
  assert exact["bleu"] == pytest.approx(100.0)
  partial = testing.score_predictions("wmt14_enfr_v100", rows,
                                      predictions=["La maison est grande.", "J'aime les chiens."])
  assert 0 < partial["bleu"] < 60


def test_language_names_cover_every_pair():
  assert {p.other for p in wmt.PAIRS} | {"en"} == set(wmt.LANGUAGE_NAMES)


def test_every_wmt_task_uses_t5s_lower_case_prefix():
  from tasks import wmt
  for pair in wmt.PAIRS:
    for source, target in (("en", pair.other), (pair.other, "en")):
      prefix = wmt.TEMPLATE.format(source=wmt.LANGUAGE_NAMES[source],
                                   target=wmt.LANGUAGE_NAMES[target])
      assert prefix.startswith("translate ") and prefix.endswith(": ")
  assert wmt.TEMPLATE.format(source="English", target="German") == \
      "translate English to German: "
