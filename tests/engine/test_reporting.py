"""Training reports: throughput and ETA arithmetic, the learning rate, the TTY-only bar."""
import io
import json

import numpy as np
import pytest

from prompt_tuning.engine import reporting


class _Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (3725, "1:02:05"),
                                           (float("inf"), "?"), (float("nan"), "?")])
def test_durations_read_like_clocks(seconds, text):
  assert reporting.format_duration(seconds) == text


def test_progress_bar_draws_only_in_a_terminal():
  pipe, terminal = io.StringIO(), _Terminal()
  for stream in (pipe, terminal):
    bar = reporting.ProgressBar(total=10, stream=stream, width=10)
    bar.update(5, "ETA 0:05")
    bar.clear()
  assert pipe.getvalue() == ""
  assert terminal.getvalue() == "\r[#####-----] 5/10 ETA 0:05\x1b[K\n"


def test_report_averages_metrics_and_computes_throughput(tmp_path):
  clock = iter([100.0, 110.0])  # reporter created at t=100, report at t=110
  writer = reporting.MetricsWriter(model_dir=str(tmp_path), tensorboard=False)
  reporter = reporting.TrainingReporter(writer=writer, total_steps=100, batch_size=32,
                                        start_step=0, stream=io.StringIO(),
                                        clock=lambda: next(clock))
  for step, loss in enumerate([4.0, 2.0, 3.0, 1.0], start=1):
    reporter.add({"loss": np.float32(loss), "learning_rate": np.float32(0.1 * step)})
  values = reporter.report(20)
  assert values["loss"] == pytest.approx(2.5)
  assert values["learning_rate"] == pytest.approx(0.4)  # the latest step's, not the mean
  assert values["steps_per_sec"] == pytest.approx(2.0)  # 20 steps in 10 s
  assert values["examples_per_sec"] == pytest.approx(64.0)
  line = reporting.format_train_line(20, 100, values, eta=40.0)
  assert line == ("step 20/100, loss 2.5000, learning_rate 0.4, steps_per_sec 2.00, "
                  "examples_per_sec 64.0, ETA 0:40")
  [record] = reporting.read_jsonl(str(tmp_path / "metrics" / "train.jsonl"))
  assert record["step"] == 20 and record["loss"] == pytest.approx(2.5)


def test_non_finite_values_are_written_as_text(tmp_path):
  writer = reporting.MetricsWriter(model_dir=str(tmp_path), tensorboard=False)
  writer.write("train", 3, {"loss": float("nan")})
  line = (tmp_path / "metrics" / "train.jsonl").read_text()
  assert json.loads(line) == {"step": 3, "loss": "nan"}


def test_only_the_primary_process_writes(tmp_path):
  writer = reporting.MetricsWriter(model_dir=str(tmp_path), is_primary=False)
  assert writer.write("train", 1, {"loss": 1.0}) == {"loss": 1.0}
  assert not (tmp_path / "metrics").exists() and not (tmp_path / "summaries").exists()


def test_eval_metrics_flatten_to_task_slash_metric():
  class Wrapped:
    value = 0.75
  flat = reporting.flatten_eval_metrics({"rte": {"accuracy": 80.0, "wrapped": Wrapped(),
                                                 "text": "not a number"}})
  assert flat == {"rte/accuracy": 80.0, "rte/wrapped": 0.75}
