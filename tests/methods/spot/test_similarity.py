"""SPoT's two prompt-similarity measures, the matrix, the ranking and the similarity command."""
import csv
import math

import numpy as np
import pytest

from prompt_tuning.methods.spot import similarity

AVG, PER = similarity.AVERAGE_TOKENS, similarity.PER_TOKEN


def test_average_tokens_matches_hand_computed_cosine_of_means():
  a = [[1.0, 0.0], [0.0, 1.0]]  # mean (0.5, 0.5)
  b = [[1.0, 1.0], [-1.0, 1.0]]  # mean (0, 1)
  # cos((.5, .5), (0, 1)) = 0.5 / (sqrt(0.5) * 1) = 1/sqrt(2)
  assert similarity.average_tokens(a, b) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
  assert similarity.average_tokens([[3.0, 4.0]], [[4.0, 3.0]]) == pytest.approx(24 / 25)


def test_per_token_matches_hand_computed_mean_of_all_pair_cosines():
  a = [[1.0, 0.0], [0.0, 1.0]]
  b = [[1.0, 1.0], [-1.0, 1.0]]
  # cos pairs: (a0,b0)=1/r2, (a0,b1)=-1/r2, (a1,b0)=1/r2, (a1,b1)=1/r2 -> sum r2, / L^2 = 4
  assert similarity.per_token(a, b) == pytest.approx(math.sqrt(2) / 4, abs=1e-12)
  # Different lengths: 1/(La Lb); a [2, 2] vs b [1, 2] = [[2, 0]]: (1 + 0) / 2.
  assert similarity.per_token(a, [[2.0, 0.0]]) == pytest.approx(0.5)
  assert similarity.average_tokens(a, [[2.0, 0.0]]) == pytest.approx(1 / math.sqrt(2))


def test_the_two_measures_differ_on_a_prompt_compared_with_itself():
  a = np.eye(4)
  assert similarity.average_tokens(a, a) == pytest.approx(1.0)
  assert similarity.per_token(a, a) == pytest.approx(0.25)  # 4 ones on the diagonal / 16


@pytest.mark.parametrize("measure", [AVG, PER])
def test_measures_ignore_token_order(measure):
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(7, 16)), rng.normal(size=(5, 16))
  before = similarity.similarity(a, b, measure)
  after = similarity.similarity(a[rng.permutation(7)], b[rng.permutation(5)], measure)
  assert after == pytest.approx(before, abs=1e-12)
  assert abs(before) > 1e-3  # a non-trivial value, not 0 == 0


@pytest.mark.parametrize("measure", [AVG, PER])
def test_measures_are_symmetric(measure):
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(6, 8)), rng.normal(size=(9, 8)) + 0.5
  assert similarity.similarity(a, b, measure) == pytest.approx(
      similarity.similarity(b, a, measure), abs=1e-12)


def test_matrix_is_symmetric_and_holds_each_pair():
  rng = np.random.default_rng(2)
  prompts = {f"p{i}": rng.normal(size=(3 + i, 4)) for i in range(4)}
  for measure in (AVG, PER):
    names, matrix = similarity.similarity_matrix(prompts, measure)
    assert names == ["p0", "p1", "p2", "p3"]
    np.testing.assert_allclose(matrix, matrix.T, atol=0)
    assert matrix[1, 3] == pytest.approx(similarity.similarity(prompts["p1"], prompts["p3"],
                                                               measure))
  _, average = similarity.similarity_matrix(prompts, AVG)
  np.testing.assert_allclose(np.diag(average), 1.0)
  _, per = similarity.similarity_matrix(prompts, PER)
  assert per[2, 2] == pytest.approx(similarity.per_token(prompts["p2"], prompts["p2"]))
  assert per[2, 2] < 0.9  # a per-token self-similarity is not 1 for random tokens


def test_rank_sources_orders_by_similarity_then_name():
  target = [[1.0, 0.0]]
  sources = {"far": [[-1.0, 0.0]], "near": [[1.0, 0.1]], "tie_b": [[0.0, 1.0]],
             "tie_a": [[0.0, 2.0]]}
  ranking = similarity.rank_sources(target, sources)
  assert [name for name, _ in ranking] == ["near", "tie_a", "tie_b", "far"]
  assert ranking[-1][1] == pytest.approx(-1.0)


def test_bad_prompts_are_refused_in_one_sentence_naming_them():
  with pytest.raises(ValueError, match=r"^Prompts mnli and rte have different embedding sizes "
                                       r"\(4 and 3\); they come from different models\.$"):
    similarity.average_tokens(np.ones((2, 4)), np.ones((2, 3)), names=("mnli", "rte"))
  with pytest.raises(ValueError, match=r"^Prompt rte has an all-zero token"):
    similarity.per_token(np.ones((2, 3)), [[1, 1, 1], [0, 0, 0]], names=("mnli", "rte"))
  with pytest.raises(ValueError, match=r"Prompt x holds NaN"):
    similarity.per_token([[np.nan, 1.0]], [[1.0, 1.0]], names=("x", "y"))
  with pytest.raises(ValueError, match=r"Unknown similarity measure 'cosine'"):
    similarity.similarity([[1.0]], [[1.0]], "cosine")


def test_csv_and_heatmap_files(tmp_path):
  names, matrix = ["t", "a"], np.array([[1.0, 0.25], [0.25, 1.0]])
  rows = list(csv.reader(similarity.matrix_csv(names, matrix).splitlines()))
  assert rows == [["", "t", "a"], ["t", "1.000000", "0.250000"], ["a", "0.250000", "1.000000"]]
  png = tmp_path / "m.png"
  similarity.write_heatmap(str(png), names, matrix, "test")
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_similarity_command_ranks_a_library_and_writes_matrix(hand_library, target, tmp_path,
                                                              capsys):
  target_path = tmp_path / "target.npy"
  np.save(target_path, target)
  out = tmp_path / "out"
  ranking = similarity.main(["--library", hand_library.root, "--target", str(target_path),
                             "--measure", "per_token", "--top_k", "2", "--out_dir", str(out)])
  assert [name for name, _ in ranking] == ["a.seed0", "b.seed0", "c.seed0", "d.seed0"]
  np.testing.assert_allclose([v for _, v in ranking], [1, 1 / math.sqrt(2), 0, -1], atol=1e-6)
  printed = capsys.readouterr().out.splitlines()
  assert printed[1].split() == ["1", "+1.0000", "a.seed0"]
  assert printed[2].split() == ["2", "+0.7071", "b.seed0"]
  assert "c.seed0" not in "\n".join(printed[:4])  # --top_k 2 prints two sources
  rows = list(csv.reader((out / "similarity_per_token.csv").read_text().splitlines()))
  assert rows[0] == ["", "target", "c.seed0", "a.seed0", "d.seed0", "b.seed0"]
  assert float(rows[1][4]) == pytest.approx(-1.0)  # target vs d
  assert (out / "similarity_per_token.png").read_bytes()[:4] == b"\x89PNG"


def test_similarity_command_refuses_a_target_from_another_model(hand_library, tmp_path):
  target_path = tmp_path / "target.npy"
  np.save(target_path, np.ones((2, 5), np.float32))
  with pytest.raises(ValueError, match=r"has embedding size 5, but library .* holds tiny "
                                       r"prompts of size 3\.$"):
    similarity.main(["--library", hand_library.root, "--target", str(target_path)])


def test_the_target_can_be_a_run_folder_read_at_its_key_step(hand_library, target, tmp_path,
                                                              run_writer, capsys):
  # At step 10 the run's prompt points like source b; at step 20 like source a.
  run = run_writer(str(tmp_path / "target_run"), {10: np.tile([1.0, 1.0, 0.0], (3, 1)),
                                                  20: target})
  ranking = similarity.main(["--library", hand_library.root, "--target", run,
                             "--target_step", "10"])
  assert ranking[0] == ("b.seed0", pytest.approx(1.0))
  ranking = similarity.main(["--library", hand_library.root, "--target", run,
                             "--target_step", "20"])
  assert ranking[0] == ("a.seed0", pytest.approx(1.0))
  with pytest.raises(ValueError, match=r"^Run .*target_run has no input_hook.prompt.npy exported "
                                       r"at step 10000 \(exported steps: \[10, 20\]\); pass "
                                       r"--target_step with one of them\.$"):
    similarity.main(["--library", hand_library.root, "--target", run])
