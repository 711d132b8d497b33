"""Evaluation's predict / score loops count examples on a progress bar, and still return every
example's output once (the padded rows of a ragged last batch dropped)."""
import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning.engine import evaluation, reporting


class _Runner:
  """Stands in for `ModelRunner`: 'predicts' each row's input ids + 1, 'scores' their sum."""

  def __init__(self):
    self.batch_rows = []

  def predict(self, trainable, frozen, batch, rng):
    del trainable, frozen, rng
    self.batch_rows.append(len(batch["inputs"]))
    return batch["inputs"] + 1

  def score(self, trainable, frozen, batch):
    del trainable, frozen
    self.batch_rows.append(len(batch["inputs"]))
    return batch["inputs"].sum(axis=1).astype(np.float32)


def _dataset(num_examples):
  inputs = np.arange(num_examples * 2, dtype=np.int32).reshape(num_examples, 2)
  return tf.data.Dataset.from_tensor_slices({"inputs": inputs}).enumerate()


@pytest.mark.parametrize("setting, shown", [("1", True), ("0", False)])
def test_predict_and_score_count_examples_on_a_bar(monkeypatch, capsys, setting, shown):
  monkeypatch.setenv(reporting.PROGRESS_ENV, setting)
  bars = []

  def recorded(*args, **kwargs):
    bars.append((kwargs, original(*args, **kwargs)))
    return bars[-1][1]

  original = reporting.progress
  monkeypatch.setattr(reporting, "progress", recorded)
  runner = _Runner()
  predicted = evaluation.make_predict_fn(runner, None, None, batch_size=4)(_dataset(10))
  scored = evaluation.make_score_fn(runner, None, None, batch_size=4)(_dataset(10))
  assert runner.batch_rows == [4, 4, 4] * 2  # the last batch of 2 is padded to 4 rows
  assert predicted[9] == (9, [19, 20]) and len(predicted) == 10
  assert scored[9] == (9, 37.0) and len(scored) == 10
  assert [(kwargs["desc"], kwargs["total"]) for kwargs, _ in bars] == [("predict", 10),
                                                                      ("score", 10)]
  drawn = capsys.readouterr().err
  if shown:
    assert [bar.n for _, bar in bars] == [10, 10]  # every example counted once, padding not
    assert "predict:   0%" in drawn and "score:   0%" in drawn and "0/10" in drawn
  else:
    assert drawn == ""
