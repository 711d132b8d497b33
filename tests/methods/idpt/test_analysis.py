"""The prompt-distance table on hand-made prompts, and the pipeline step that prints it."""
import numpy as np
import pytest

from prompt_tuning.methods.idpt import analysis


def _prompts():
  # Dataset A: template a1 twice (identical), template a2 at 90 degrees; dataset B opposite.
  e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
  prompts = np.stack([e1, e1, e2, -e1]).reshape(4, 1, 2)
  return prompts, ["A", "A", "A", "B"], ["a1", "a1", "a2", "b1"]


def test_the_three_rows_are_the_mean_cosine_distances_of_their_pairs():
  table = analysis.distance_table(*_prompts())
  assert table[analysis.SAME_TEMPLATE] == {"mean": 0.0, "pairs": 1}
  # (0,2) and (1,2): both orthogonal, distance 1.
  assert table[analysis.OTHER_TEMPLATE] == {"mean": 1.0, "pairs": 2}
  # (0,3), (1,3): opposite, distance 2; (2,3): orthogonal, 1 -> mean 5/3.
  assert table[analysis.OTHER_DATASET]["pairs"] == 3
  assert table[analysis.OTHER_DATASET]["mean"] == pytest.approx(5 / 3)
  lines = analysis.format_table(table, "title")
  assert lines[0] == "title" and lines[2].split()[-2:] == ["0.0000", "1"]
  assert lines[4].split()[-2:] == ["1.6667", "3"]


def test_scale_does_not_matter_and_rows_without_pairs_are_nan():
  prompts = np.array([[[1.0, 2.0]], [[2.0, 4.0]]])
  table = analysis.distance_table(prompts, ["A", "A"], ["t", "t"])
  assert table[analysis.SAME_TEMPLATE]["mean"] == pytest.approx(0.0, abs=1e-12)
  assert np.isnan(table[analysis.OTHER_DATASET]["mean"])
  assert table[analysis.OTHER_DATASET]["pairs"] == 0


def test_bad_inputs_are_one_sentence():
  with pytest.raises(ValueError, match="one dataset and one template per prompt; got 2 prompts"):
    analysis.distance_table(np.ones((2, 1, 2)), ["A"], ["t", "t"])
  with pytest.raises(ValueError, match="all zeros"):
    analysis.distance_table(np.zeros((2, 1, 2)), ["A", "B"], ["t", "u"])
