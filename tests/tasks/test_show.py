"""The `python -m prompt_tuning.data.show` inspection tool."""
import io

from prompt_tuning.data import show
from prompt_tuning.data import testing

EXAMPLES = {"super_glue/rte": {"validation": [
    {"premise": "The cat sat.", "hypothesis": "A cat sat.", "idx": 0, "label": 0},
    {"premise": "Dogs bark.", "hypothesis": "Cats bark.", "idx": 1, "label": 1}]}}


def test_prints_splits_and_processed_examples(tfds_dir):
  out = io.StringIO()
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES):
    code = show.main(["super_glue_rte_v102", "--num_examples", "1"], out=out)
  text = out.getvalue()
  assert code == 0
  assert "task super_glue_rte_v102" in text
  assert "splits: train, validation, test" in text
  assert "example 0 (validation)" in text and "example 1" not in text
  assert "inputs_pretokenized: 'rte hypothesis: A cat sat. premise: The cat sat.'" in text
  assert "targets_pretokenized: 'entailment'" in text
  vocab = testing.seqio.get_mixture_or_task("super_glue_rte_v102").output_features[
      "targets"].vocabulary
  assert f"targets: {vocab.encode('entailment') + [1]}" in text


def test_mixture_lists_its_tasks(tfds_dir):
  out = io.StringIO()
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES):
    code = show.main(["super_glue_v102_proportional", "--num_examples", "0"], out=out)
  assert code == 0
  assert "mixture super_glue_v102_proportional: 8 tasks" in out.getvalue()
  assert "  super_glue_wsc_fixed_v102\n" in out.getvalue()


def test_unknown_name_is_an_error():
  out = io.StringIO()
  assert show.main(["no_such_task"], out=out) == 2
  assert "'no_such_task' is not a registered task or mixture" in out.getvalue()
