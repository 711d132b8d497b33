"""The reader's gin helpers: DPR's learning-rate schedule and the re-ranker task's lengths."""
import pytest

from prompt_tuning.methods.reader import configurables


def test_linear_warmup_then_linear_decay_to_zero():
  schedule = configurables.linear_warmup_decay(peak_value=1e-5, warmup_steps=1000,
                                               total_steps=30000)
  assert float(schedule(0)) == 0.0
  assert float(schedule(500)) == pytest.approx(5e-6)
  assert float(schedule(1000)) == pytest.approx(1e-5)
  assert float(schedule(15500)) == pytest.approx(5e-6)
  assert float(schedule(30000)) == pytest.approx(0.0, abs=1e-12)


def test_group_lengths_hold_one_positive_and_the_negatives():
  assert configurables.group_lengths(num_negatives=23, passage_length=256) == {
      "passages": 24 * 256}
