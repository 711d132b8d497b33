"""The SPoT CPU demonstration: at a reduced size (e2e) it runs, prints its three results, writes
the heatmap, and its numbers are consistent with the curves it recorded; its helpers by hand."""
import os

import numpy as np
import pytest

from prompt_tuning.methods.spot import demo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))


@pytest.mark.e2e
def test_demo_prints_similarity_curves_and_spearman(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  result = demo.run(work_dir=str(tmp_path / "demo"), base_steps=60, source_steps=20,
                    target_steps=20, key_step=10, threshold=30.0, skills=("last", "second"))
  printed = capsys.readouterr().out
  for part in ("(i) Source prompts", "(ii) Target accuracy", "(iii) Similarity", "Spearman"):
    assert part in printed
  assert printed.strip() == result["text"].strip()
  assert open(result["heatmap"], "rb").read(4) == b"\x89PNG"
  assert -1.0 <= result["same_task_average_tokens"] <= 1.0
  assert -1.0 <= result["different_task_average_tokens"] <= 1.0
  assert len(result["pairs"]) == 4  # two targets x two sources
  assert sum(p["related"] for p in result["pairs"]) == 2
  # Every curve is evaluated at steps 0, 10, 20; accuracies are percentages.
  for skill, curves in result["curves"].items():
    assert set(curves) == {"sampled vocabulary", "from last_a", "from second_a"}
    for curve in curves.values():
      assert [s for s, _ in curve] == [0, 10, 20]
      assert all(0.0 <= v <= 100.0 for _, v in curve)
  # The gains are the mean accuracies (after step 0) minus the baseline's, recomputed here.
  for pair in result["pairs"]:
    curves = result["curves"][pair["target"][:-2]]
    mean = lambda c: np.mean([v for s, v in c if s > 0])
    assert pair["gain"] == pytest.approx(mean(curves[f"from {pair['source']}"]) -
                                         mean(curves["sampled vocabulary"]))
  assert -1.0 <= result["spearman"] <= 1.0


def test_steps_to_threshold_and_seed_similarity():
  assert demo.steps_to([(0, 10.0), (10, 55.0), (20, 61.0)], 60.0) == 20
  assert demo.steps_to([(0, 10.0)], 60.0) is None
  assert demo.sooner(0, 20) and demo.sooner(70, None) and not demo.sooner(None, None)
  assert not demo.sooner(80, 30)
  names = ["a/seed0", "a/seed1", "b/seed0"]
  matrix = np.array([[1.0, 0.8, 0.2], [0.8, 1.0, 0.4], [0.2, 0.4, 1.0]])
  assert demo.seed_similarity(names, matrix) == pytest.approx((0.8, 0.3))
  assert demo.mean_accuracy([(0, 0.0), (10, 20.0), (20, 40.0)]) == 30.0
