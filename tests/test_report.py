"""`python -m prompt_tuning.report`: runs side by side and their final / best values."""
import json
import os
import subprocess
import sys

import pytest

from prompt_tuning import report
from tests.engine.test_reporting import png_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def two_runs(tmp_path):
  """Two hand-written runs, as a training run's MetricsWriter leaves them."""
  a, b = tmp_path / "random_init", tmp_path / "class_labels"
  _write(a / "metrics" / "train.jsonl", [
      {"step": 10, "loss": 2.0, "learning_rate": 0.3},
      {"step": 20, "loss": 1.0, "learning_rate": 0.3},
      {"step": 30, "loss": 1.5, "learning_rate": 0.3}])
  _write(a / "metrics" / "infer_eval.jsonl", [
      {"step": 15, "rte/accuracy": 50.0}, {"step": 30, "rte/accuracy": 60.0}])
  _write(b / "metrics" / "train.jsonl", [
      {"step": 10, "loss": 3.0, "learning_rate": 0.1},
      {"step": 20, "loss": 0.9, "learning_rate": 0.1},
      {"step": 20, "loss": 0.5, "learning_rate": 0.1},  # a replayed step: the later row counts
      {"step": 30, "loss": "nan", "learning_rate": 0.1}])
  (b / "metrics" / "train.jsonl").open("a").write('{"step": 40, "lo')  # cut short by a kill
  _write(b / "metrics" / "infer_eval.jsonl", [
      {"step": 15, "rte/accuracy": 70.0}, {"step": 30, "rte/accuracy": 65.0}])
  _write(b / "metrics" / "train_eval.jsonl", [{"step": 30, "rte/loss": 0.625}])
  return a, b


def test_report_plots_runs_side_by_side_and_tabulates_final_and_best(two_runs, tmp_path, capsys):
  a, b = two_runs
  out = tmp_path / "compare.png"
  rows = report.main([str(a), str(b), "--out", str(out)])
  # loss, learning_rate, rte/accuracy, train_eval/rte/loss: 3 panels a row, two rows.
  assert png_size(out) == (1500, 700)
  table = {(r["run"], r["metric"]): (r["final"], r["final_step"], r["best"], r["best_step"])
           for r in rows}
  assert table[("random_init", "loss")] == (1.5, 30, 1.0, 20)  # lower is better
  assert table[("class_labels", "loss")][1:] == (30, 0.5, 20)  # NaN final; best ignores NaN
  assert table[("random_init", "learning_rate")] == (0.3, 30, None, None)  # no "best" rate
  assert table[("random_init", "rte/accuracy")] == (60.0, 30, 60.0, 30)  # higher is better
  assert table[("class_labels", "rte/accuracy")] == (65.0, 30, 70.0, 15)
  assert table[("class_labels", "train_eval/rte/loss")] == (0.625, 30, 0.625, 30)
  assert ("random_init", "train_eval/rte/loss") not in table  # that run has no train-eval
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].split() == ["run", "metric", "final", "best"]
  assert printed[1].split() == ["random_init", "loss", "1.5", "(step", "30)", "1", "(step", "20)"]
  assert printed[4].split() == ["class_labels", "loss", "nan", "(step", "30)", "0.5", "(step",
                                "20)"]
  assert printed[5].split() == ["class_labels", "learning_rate", "0.1", "(step", "30)", "-"]
  assert printed[6].split() == ["class_labels", "rte/accuracy", "65", "(step", "30)", "70",
                                "(step", "15)"]
  assert len(printed) == 1 + 7 + 1  # header, 3 + 4 rows, the closing line
  assert printed[-1] == f"Wrote {out} (1500x700, 4 metrics, 2 runs)"


def test_report_metrics_take_names_and_patterns(two_runs, tmp_path):
  a, b = two_runs
  out = tmp_path / "accuracy.png"
  rows = report.main([str(a), str(b), "--out", str(out), "--metrics", "*/accuracy"])
  assert png_size(out) == (500, 350)
  assert [(r["run"], r["metric"], r["final"]) for r in rows] == [
      ("random_init", "rte/accuracy", 60.0), ("class_labels", "rte/accuracy", 65.0)]


def test_runs_with_the_same_folder_name_keep_their_paths_apart(two_runs, tmp_path):
  a, _ = two_runs
  copy = tmp_path / "again" / "random_init"
  _write(copy / "metrics" / "train.jsonl", [{"step": 5, "loss": 4.0}])
  runs = report.load_runs([str(a), str(copy)])
  assert [r.name for r in runs] == [os.path.normpath(a), os.path.normpath(copy)]


@pytest.mark.parametrize("extra, message", [
    (["--metrics", "bleu"], "error: No metric matches 'bleu'; the runs have: learning_rate, "
                            "loss, rte/accuracy."),
    (["missing_run"], "error: No metrics in 'missing_run': expected metrics/train.jsonl, "
                      "train_eval.jsonl or infer_eval.jsonl (written by a training run) under it.")])
def test_report_command_fails_with_one_sentence(two_runs, tmp_path, extra, message):
  a, _ = two_runs
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.report", str(a), *extra,
       "--out", str(tmp_path / "x.png")], cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO},
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip() == message
  assert not (tmp_path / "x.png").exists()
