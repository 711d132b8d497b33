"""Retrieval of sources for a target prompt and the targeted-transfer initialisers, by hand.

The `hand_library` fixture's key prompts have cosine 1 (a), 1/sqrt(2) (b), 0 (c) and -1 (d)
to the target under both measures; its value prompts are constant tables 1, 2, 3 and 4.
"""
import json
import math

import numpy as np
import pytest

from prompt_tuning.engine import export
from prompt_tuning.methods.spot import library as library_lib
from prompt_tuning.methods.spot import retrieval

R2 = 1 / math.sqrt(2)


@pytest.mark.parametrize("measure", ["average_tokens", "per_token"])
def test_retrieval_returns_sources_in_order_of_similarity(hand_library, target, measure):
  retrieved = retrieval.retrieve(hand_library, target, measure=measure)
  assert [r.entry.name for r in retrieved] == ["a.seed0", "b.seed0", "c.seed0", "d.seed0"]
  np.testing.assert_allclose([r.similarity for r in retrieved], [1, R2, 0, -1], atol=1e-6)
  top2 = retrieval.retrieve(hand_library, target, top_k=2, measure=measure)
  assert [r.entry.name for r in top2] == ["a.seed0", "b.seed0"]


def test_retrieval_order_follows_the_measure(tmp_path, library_maker):
  """Two sources the measures rank differently: the average measure sees only token means."""
  target = np.array([[1.0, 0.0], [0.0, 1.0]])
  spread = np.array([[1.0, 0.0], [0.0, 1.0]])  # same tokens: mean cos 1, per-token (1+1)/4
  together = np.array([[1.0, 0.9], [0.9, 1.0]])  # mean cos 1, per-token 3.8/(4 sqrt(1.81)) ~ 0.71
  lib = library_maker(tmp_path, {"spread": ("s", spread, spread),
                                 "together": ("t", together, together)})
  per = retrieval.retrieve(lib, target, measure="per_token")
  assert [r.entry.name for r in per] == ["together", "spread"]
  assert per[1].similarity == pytest.approx(0.5)
  assert per[0].similarity == pytest.approx(2 * (1 + 0.9) / (4 * math.sqrt(1.81)), abs=1e-6)
  average = retrieval.retrieve(lib, target, measure="average_tokens")
  assert [r.similarity for r in average] == pytest.approx([1.0, 1.0])
  assert [r.entry.name for r in average] == ["spread", "together"]  # a tie goes by name


def test_best_of_top_k_candidates_are_the_value_prompts_in_rank_order(hand_library, target):
  retrieved = retrieval.retrieve(hand_library, target, top_k=3)
  items = retrieval.candidates(hand_library, retrieved)
  assert [(c["name"], c["task"]) for c in items] == [
      ("a.seed0", "task_a"), ("b.seed0", "task_b"), ("c.seed0", "task_c")]
  loaded = [export.load_prompt_npy(path=c["prompt_file"]) for c in items]
  np.testing.assert_array_equal(np.stack(loaded), np.stack(
      [np.full((2, 3), 1.0), np.full((2, 3), 2.0), np.full((2, 3), 3.0)]).astype(np.float32))


def test_weighted_average_uses_similarity_weights(hand_library, target):
  top2 = retrieval.retrieve(hand_library, target, top_k=2)
  np.testing.assert_allclose(retrieval.weights([r.similarity for r in top2]),
                             [1 / (1 + R2), R2 / (1 + R2)], rtol=1e-6)
  # (1 * 1 + R2 * 2) / (1 + R2) = sqrt(2) in every position.
  average = retrieval.weighted_average(hand_library, top2)
  assert average.dtype == np.float32 and average.shape == (2, 3)
  np.testing.assert_allclose(average, np.full((2, 3), math.sqrt(2)), rtol=1e-6)


def test_non_positive_similarities_get_zero_weight(hand_library, target):
  everything = retrieval.retrieve(hand_library, target)  # sims 1, R2, 0, -1
  np.testing.assert_allclose(retrieval.weights([r.similarity for r in everything]),
                             [1 / (1 + R2), R2 / (1 + R2), 0, 0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(retrieval.weighted_average(hand_library, everything),
                             np.full((2, 3), math.sqrt(2)), rtol=1e-6)
  np.testing.assert_allclose(retrieval.weights([3.0, 1.0]), [0.75, 0.25])
  with pytest.raises(ValueError, match=r"^No retrieved source has a positive similarity "
                                       r"\(\[0.0, -0.5\]\), so a similarity-weighted average "
                                       r"is undefined\.$"):
    retrieval.weights([0.0, -0.5])


def test_weighted_average_refuses_value_prompts_of_different_shapes(tmp_path, library_maker):
  lib = library_maker(tmp_path, {"x": ("x", np.ones((2, 2)), np.ones((2, 2))),
                                 "y": ("y", np.ones((3, 2)), np.ones((3, 2)))})
  with pytest.raises(ValueError, match=r"different shapes \{'x': \(2, 2\), 'y': \(3, 2\)\}"):
    retrieval.weighted_average(lib, retrieval.retrieve(lib, np.ones((1, 2))))


def test_mixture_tasks_are_the_top_k_tasks_once_each(tmp_path, library_maker):
  token = lambda *t: np.asarray([t], np.float32)  # pylint: disable=unnecessary-lambda-assignment
  lib = library_maker(tmp_path, {
      "mnli.seed0": ("mnli", token(1, 0), token(1, 0)),
      "mnli.seed1": ("mnli", token(1, 0.1), token(1, 0)),
      "qqp.seed0": ("qqp", token(1, 0.5), token(1, 0)),
      "squad.seed0": ("squad", token(0, 1), token(1, 0))})
  retrieved = retrieval.retrieve(lib, token(1, 0), top_k=3)
  assert [r.entry.name for r in retrieved] == ["mnli.seed0", "mnli.seed1", "qqp.seed0"]
  assert retrieval.mixture_tasks(retrieved) == ["mnli", "qqp"]


def test_retrieval_refuses_bad_requests_in_one_sentence(hand_library, target, tmp_path):
  with pytest.raises(ValueError, match=r"^top_k must be at least 1, got 0\.$"):
    retrieval.retrieve(hand_library, target, top_k=0)
  with pytest.raises(ValueError, match=r"^The target prompt has embedding size 4, but library "
                                       r".* holds tiny prompts of size 3\.$"):
    retrieval.retrieve(hand_library, np.ones((2, 4)))
  empty = library_lib.Library(str(tmp_path / "empty"), library_lib.ModelInfo("tiny", 3), [])
  with pytest.raises(library_lib.LibraryError, match=r"has no entries\.$"):
    retrieval.retrieve(empty, target)


def test_retrieval_command_writes_the_average_for_from_file_gin(hand_library, target, tmp_path,
                                                                capsys):
  from prompt_tuning.prompts import initializers  # pylint: disable=g-import-not-at-top
  target_path = tmp_path / "target.npy"
  np.save(target_path, target)
  out = tmp_path / "out"
  retrieval.main(["--library", hand_library.root, "--target", str(target_path), "--top_k", "2",
                  "--out_dir", str(out)])
  summary = json.loads((out / "retrieval.json").read_text())
  assert [c["name"] for c in summary["candidates"]] == ["a.seed0", "b.seed0"]
  assert summary["mixture_tasks"] == ["task_a", "task_b"]
  assert summary["weighted_average"]["weights"] == pytest.approx(
      {"a.seed0": 1 / (1 + R2), "b.seed0": R2 / (1 + R2)})
  # The initialiser behind gin/prompts/from_file.gin reads the file as the starting prompt.
  init = initializers.from_npy(str(out / "weighted_average.npy"))
  prompt = np.asarray(init(None, (2, 3)))
  np.testing.assert_allclose(prompt, np.full((2, 3), math.sqrt(2)), rtol=1e-6)
  printed = capsys.readouterr().out
  assert "Top-2 mixture tasks: task_a, task_b" in printed
  assert "--gin.PROMPT_FILE=" in printed
