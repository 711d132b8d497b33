"""Few-shot suite: k-shot prompt text, cutting predictions at the next shot, suite average."""
import pytest
import seqio

from prompt_tuning.data import fewshot as fewshot_lib
from prompt_tuning.data import testing
from tasks import fewshot

SEP = fewshot_lib.EXAMPLE_SEPARATOR
RTE_TEST = [{"premise": "The cat sat.", "hypothesis": "A cat sat.", "idx": 0, "label": 0},
            {"premise": "Dogs bark.", "hypothesis": "Cats bark.", "idx": 1, "label": 1}]
RTE_TRAIN = [{"premise": f"P{i}.", "hypothesis": f"H{i}.", "idx": i, "label": i % 2}
             for i in range(4)]
EMPTY_PAGES = {"doc_source": [], "filename": [], "title": [], "wiki_context": []}
EMPTY_SEARCH = {"description": [], "filename": [], "rank": [], "search_context": [], "title": [],
                "url": []}


def _trivia(question, value, aliases):
  return {"question": question, "question_id": "q", "question_source": "s",
          "entity_pages": EMPTY_PAGES, "search_results": EMPTY_SEARCH,
          "answer": {"aliases": aliases, "normalized_aliases": [a.lower() for a in aliases],
                     "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                     "normalized_value": value.lower(), "type": "x", "value": value}}


def _lingua(source, target):
  return {"gem_id": "g", "gem_parent_id": "g", "references": [target], "source": source,
          "source_aligned": {"en": source}, "target": target, "target_aligned": {"en": target}}


EXAMPLES = {
    "super_glue/rte": {"validation": RTE_TEST, "train": RTE_TRAIN},
    "super_glue/cb": {"validation": [
        {"premise": "It rained.", "hypothesis": "It was Monday.", "idx": 0, "label": 2}],
                      "train": [{"premise": "It rained.", "hypothesis": "It was wet.", "idx": 0,
                                 "label": 0}]},
    "super_glue/wic": {"validation": [
        {"sentence1": "He sat on the bank.", "sentence2": "The bank was closed.", "word": "bank",
         "start1": 15, "end1": 19, "start2": 4, "end2": 8, "idx": 0, "label": 0}],
                       "train": [{"sentence1": "I run fast.", "sentence2": "They run home.",
                                  "word": "run", "start1": 2, "end1": 5, "start2": 5, "end2": 8,
                                  "idx": 0, "label": 1}]},
    "trivia_qa/rc.nocontext": {
        "validation": [_trivia("Who wrote Hamlet?", "Shakespeare", ["Shakespeare", "Bard"]),
                       _trivia("Red planet?", "Mars", ["Mars"])],
        "train": [_trivia("Largest planet?", "Jupiter", ["Jupiter"])]},
    "web_questions": {"test": [{"question": "where is paris?", "answers": ["France", "Europe"],
                                "url": "u"}],
                      "train": [{"question": "who is bob?", "answers": ["a man"], "url": "u"}]},
    "wmt16_translate/de-en": {"test": [{"en": "Good morning, my dear friend.",
                                        "de": "Guten Morgen, mein lieber Freund."}],
                              "train": [{"en": "Thank you.", "de": "Danke."}]},
    "wmt16_translate/ro-en": {"test": [{"en": "Good night, my dear friend.",
                                        "ro": "Noapte buna, dragul meu prieten."}],
                              "train": [{"en": "Thank you.", "ro": "Multumesc."}]},
    "xsum": {"test": [{"document": "The cat sat on the mat all day.",
                       "summary": "A cat sat on a mat."}],
             "train": [{"document": "Rain fell.", "summary": "It rained."}]},
    "gem/wiki_lingua_english_en": {
        "test": [_lingua("Fill the pot. Boil the water.", "Boil water in a pot.")],
        "train": [_lingua("Open the box. Take out the toy.", "Unbox the toy.")]},
}


@pytest.fixture
def mocked(tfds_dir):
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES):
    yield


def _inputs(name):
  return [r["inputs_pretokenized"] for r in testing.process(name, split="test")]


def test_zero_shot_templates(mocked):
  assert _inputs("fewshot_rte_0shot") == [
      "The cat sat. question: A cat sat. Is it true or false? answer:",
      "Dogs bark. question: Cats bark. Is it true or false? answer:"]
  assert _inputs("fewshot_wic_0shot") == [
      "He sat on the bank. The bank was closed. question: The word bank is used in the same way "
      "in the two sentences. Is it true or False? answer:"]
  assert _inputs("fewshot_web_questions_0shot") == ["Q: where is paris? A:"]
  assert _inputs("fewshot_wmt16_ende_0shot") == [
      "Translate English to German: Good morning, my dear friend."]
  assert _inputs("fewshot_xsum_0shot") == [
      "Article: The cat sat on the mat all day. One sentence summary:"]


# The exact 1-shot text of one test example per suite task: the shot (template + " " + answer),
# the separator, the query (template alone); and the target the prediction is scored against.
ONE_SHOT = {
    "cb": ("It rained. question: It was wet. Is it true or false or neither? answer: true" + SEP +
           "It rained. question: It was Monday. Is it true or false or neither? answer:",
           "neither"),
    "wic": ("I run fast. They run home. question: The word run is used in the same way in the "
            "two sentences. Is it true or False? answer: true" + SEP +
            "He sat on the bank. The bank was closed. question: The word bank is used in the "
            "same way in the two sentences. Is it true or False? answer:", "false"),
    "trivia_qa": ("Q: Largest planet? A: Jupiter" + SEP + "Q: Who wrote Hamlet? A:",
                  "Shakespeare"),
    "web_questions": ("Q: who is bob? A: a man" + SEP + "Q: where is paris? A:", "France"),
    "wmt16_ende": ("Translate English to German: Thank you. Danke." + SEP +
                   "Translate English to German: Good morning, my dear friend.",
                   "Guten Morgen, mein lieber Freund."),
    "wmt16_enro": ("Translate English to Romanian: Thank you. Multumesc." + SEP +
                   "Translate English to Romanian: Good night, my dear friend.",
                   "Noapte buna, dragul meu prieten."),
    "xsum": ("Article: Rain fell. One sentence summary: It rained." + SEP +
             "Article: The cat sat on the mat all day. One sentence summary:",
             "A cat sat on a mat."),
    "wiki_lingua_en": ("Article: Open the box. Take out the toy. One sentence summary: Unbox the "
                       "toy." + SEP + "Article: Fill the pot. Boil the water. One sentence "
                       "summary:", "Boil water in a pot."),
}


def test_every_suite_task_renders_its_one_shot_input_exactly(mocked):
  assert sorted(ONE_SHOT) == sorted(fewshot.PAPER_SUITE)
  for task, (inputs, target) in ONE_SHOT.items():
    row = testing.process(f"fewshot_{task}_1shot", split="test")[0]
    assert (row["inputs_pretokenized"], row["targets_pretokenized"]) == (inputs, target), task
  # RTE (four training examples): one of them, solved, then the query.
  rte = _inputs("fewshot_rte_1shot")[0]
  shot, query = rte.split(SEP)
  assert shot in {f"P{i}. question: H{i}. Is it true or false? answer: "
                  f"{'true' if i % 2 == 0 else 'false'}" for i in range(4)}
  assert query == "The cat sat. question: A cat sat. Is it true or false? answer:"


def test_romanian_and_wiki_lingua_predictions_are_cut_and_scored(mocked):
  rows = testing.process("fewshot_wmt16_enro_1shot", split="test")
  result = testing.score_predictions(
      "fewshot_wmt16_enro_1shot", rows,
      predictions=["<extra_id_0> Noapte buna, dragul meu prieten. Translate English to "
                   "Romanian: Yes. Da."])
  assert result["bleu"] == pytest.approx(100.0)
  rows = testing.process("fewshot_wiki_lingua_en_1shot", split="test")
  result = testing.score_predictions(
      "fewshot_wiki_lingua_en_1shot", rows,
      predictions=["Boil water in a pot. Article: Open the door."])
  assert result["rouge2"] == pytest.approx(100.0)


def test_label_words(mocked):
  assert [r["targets_pretokenized"] for r in testing.process("fewshot_rte_0shot", split="test")
          ] == ["true", "false"]
  assert [r["targets_pretokenized"] for r in testing.process("fewshot_cb_0shot", split="test")
          ] == ["neither"]


def test_one_shot_prepends_a_solved_training_example(mocked):
  assert _inputs("fewshot_cb_1shot") == [
      "It rained. question: It was wet. Is it true or false or neither? answer: true" + SEP +
      "It rained. question: It was Monday. Is it true or false or neither? answer:"]
  assert _inputs("fewshot_trivia_qa_1shot") == [
      "Q: Largest planet? A: Jupiter" + SEP + "Q: Who wrote Hamlet? A:",
      "Q: Largest planet? A: Jupiter" + SEP + "Q: Red planet? A:"]
  assert _inputs("fewshot_wmt16_ende_1shot") == [
      "Translate English to German: Thank you. Danke." + SEP +
      "Translate English to German: Good morning, my dear friend."]


def test_four_shots_are_four_distinct_training_examples(mocked):
  for text in _inputs("fewshot_rte_4shot"):
    *shots, query = text.split(SEP)
    assert sorted(shots) == sorted(
        f"P{i}. question: H{i}. Is it true or false? answer: {'true' if i % 2 == 0 else 'false'}"
        for i in range(4))
    assert query.endswith("Is it true or false? answer:")


def test_classification_compares_the_first_word(mocked):
  rows = testing.process("fewshot_rte_1shot", split="test")
  result = testing.score_predictions(
      "fewshot_rte_1shot", rows, predictions=[" True, since the cat sat.", "maybe false"])
  assert result == {"accuracy": 50.0}


def test_generation_is_cut_before_the_next_example(mocked):
  rows = testing.process("fewshot_trivia_qa_1shot", split="test")
  result = testing.score_predictions(
      "fewshot_trivia_qa_1shot", rows,
      predictions=["the Bard Q: Who painted the Mona Lisa? A: Leonardo", "Venus"])
  assert result["em"] == pytest.approx(50.0)  # "the Bard" matches an alias
  rows = testing.process("fewshot_wmt16_ende_1shot", split="test")
  result = testing.score_predictions(
      "fewshot_wmt16_ende_1shot", rows,
      predictions=["Guten Morgen, mein lieber Freund. Translate English to German: Bye. Tschuss."])
  assert result["bleu"] == pytest.approx(100.0)
  rows = testing.process("fewshot_xsum_1shot", split="test")
  result = testing.score_predictions(
      "fewshot_xsum_1shot", rows, predictions=["A cat sat on a mat. Article: more text"])
  assert result["rouge2"] == pytest.approx(100.0)


def test_predictions_keep_the_text_between_the_first_two_sentinels(mocked):
  assert fewshot.between_sentinels("<extra_id_0> Paris <extra_id_1> Q: x") == " Paris "
  assert fewshot.between_sentinels("<extra_id_0> Paris") == " Paris"
  assert fewshot.between_sentinels("Paris Q: next") == "Paris Q: next"
  rows = testing.process("fewshot_trivia_qa_1shot", split="test")
  result = testing.score_predictions(
      "fewshot_trivia_qa_1shot", rows,
      predictions=["<extra_id_0> the Bard <extra_id_1> Venus", "Venus Q: Mars"])
  assert result["em"] == pytest.approx(50.0)
  rows = testing.process("fewshot_rte_1shot", split="test")
  result = testing.score_predictions(
      "fewshot_rte_1shot", rows, predictions=["<extra_id_0> true <extra_id_1> false", "false"])
  assert result == {"accuracy": 100.0}
  assert sorted(fewshot.PAPER_SUITE) == sorted(set(fewshot.SUITE) - {"rte"})


def test_suite_mixtures_hold_the_nine_tasks():
  for k in fewshot.SHOTS:
    mixture = seqio.get_mixture_or_task(f"fewshot_suite_{k}shot")
    assert sorted(t.name for t in mixture.tasks) == sorted(
        f"fewshot_{t}_{k}shot" for t in ("rte", "cb", "wic", "trivia_qa", "web_questions",
                                         "wmt16_ende", "wmt16_enro", "xsum", "wiki_lingua_en"))


def test_suite_score_is_the_mean_of_headline_metrics():
  headline = {"rte": ("accuracy", 60.0), "cb": ("accuracy", 50.0), "wic": ("accuracy", 55.0),
              "trivia_qa": ("em", 20.0), "web_questions": ("em", 10.0),
              "wmt16_ende": ("bleu", 25.0), "wmt16_enro": ("bleu", 20.0),
              "xsum": ("rouge2", 9.0), "wiki_lingua_en": ("rouge2", 6.0)}
  results = {f"fewshot_{t}_1shot": {m: v, "other": 1000.0} for t, (m, v) in headline.items()}
  score = fewshot.suite_score(results, num_shots=1)
  assert score["average"] == pytest.approx((255.0 - 60.0) / 8)  # RTE is not averaged
  assert score["rte"] == 60.0
  assert score["xsum"] == 9.0
  del results["fewshot_cb_1shot"]
  with pytest.raises(ValueError, match="fewshot_cb_1shot"):
    fewshot.suite_score(results, num_shots=1)
