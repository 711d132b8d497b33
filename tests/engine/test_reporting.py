"""Training reports: throughput and ETA arithmetic, the learning rate, TTY-only progress bars,
TensorBoard summaries through clu, the learning-curve PNG, and rows dropped on resume."""
import io
import json
import os
import struct

import numpy as np
import pytest

from prompt_tuning import report
from prompt_tuning.engine import reporting


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def png_size(path):
  """`(width, height)` from a PNG's IHDR chunk, after checking the file is a whole valid PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
  with Image.open(path) as image:
    image.verify()  # chunk CRCs and structure
  return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (3725, "1:02:05"),
                                           (float("inf"), "?"), (float("nan"), "?")])
def test_durations_read_like_clocks(seconds, text):
  assert reporting.format_duration(seconds) == text


def _train(reporter, steps, log_period):
  for step in steps:
    reporter.add({"loss": np.float32(1.0 / step), "learning_rate": np.float32(0.1)})
    reporter.step_done(step)
    if step % log_period == 0:
      reporter.report(step)


def test_progress_bar_draws_only_in_a_terminal(tmp_path, monkeypatch):
  monkeypatch.delenv(reporting.PROGRESS_ENV, raising=False)
  pipe, terminal = io.StringIO(), _Terminal()
  for stream in (pipe, terminal):
    writer = reporting.MetricsWriter(model_dir=str(tmp_path / str(id(stream))), tensorboard=False)
    reporter = reporting.TrainingReporter(writer=writer, total_steps=10, batch_size=2,
                                          start_step=0, stream=stream)
    _train(reporter, range(1, 11), log_period=5)
  assert pipe.getvalue() == ""
  drawn = terminal.getvalue()
  assert "train:  50%" in drawn and " 5/10 " in drawn  # redrawn after the step-5 report
  assert "train: 100%" in drawn and " 10/10 " in drawn and drawn.endswith("\n")  # closed


def test_a_resumed_run_bar_starts_at_its_step(tmp_path, monkeypatch):
  monkeypatch.delenv(reporting.PROGRESS_ENV, raising=False)
  terminal = _Terminal()
  writer = reporting.MetricsWriter(model_dir=str(tmp_path), tensorboard=False)
  reporting.TrainingReporter(writer=writer, total_steps=40, batch_size=2, start_step=30,
                             stream=terminal)
  assert " 30/40 " in terminal.getvalue()


@pytest.mark.parametrize("tty, env, primary, shown", [
    (True, None, True, True), (False, None, True, False), (True, None, False, False),
    (True, "0", True, False), (False, "1", True, True), (False, "yes", False, False)])
def test_progress_shows_in_a_terminal_unless_told_otherwise(monkeypatch, tty, env, primary, shown):
  if env is None:
    monkeypatch.delenv(reporting.PROGRESS_ENV, raising=False)
  else:
    monkeypatch.setenv(reporting.PROGRESS_ENV, env)
  stream = _Terminal() if tty else io.StringIO()
  assert reporting.show_progress(stream, primary=primary) is shown
  with reporting.progress(range(3), desc="score", stream=stream, primary=primary) as bar:
    assert list(bar) == [0, 1, 2]
  assert ("score: 100%" in stream.getvalue()) is shown


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
  reporting.TrainingReporter(writer=writer, total_steps=5, batch_size=1, start_step=0)
  assert writer.write("train", 1, {"loss": 1.0}) == {"loss": 1.0}
  writer.write("infer_eval", 1, {"t/accuracy": 1.0})
  writer.close()
  assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_summaries_are_tensorboard_scalars(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  writer = reporting.MetricsWriter(model_dir=str(tmp_path))
  writer.write("train", 3, {"loss": 1.5})
  writer.write("train", 7, {"loss": 0.25})
  writer.write("infer_eval", 7, {"rte/accuracy": 80.0})
  writer.close()
  train = event_accumulator.EventAccumulator(str(tmp_path / "summaries" / "train"))
  train.Reload()
  assert [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
          for e in train.Tensors("loss")] == [(3, 1.5), (7, 0.25)]
  assert train.SummaryMetadata("loss").plugin_data.plugin_name == "scalars"
  evals = event_accumulator.EventAccumulator(str(tmp_path / "summaries" / "infer_eval"))
  evals.Reload()
  [event] = evals.Tensors("rte/accuracy")
  assert event.step == 7 and float(tensor_util.make_ndarray(event.tensor_proto)) == 80.0


@pytest.mark.slow
def test_training_draws_a_learning_curve_png_at_each_eval(tmp_path):
  writer = reporting.MetricsWriter(model_dir=str(tmp_path), tensorboard=False)
  reporter = reporting.TrainingReporter(writer=writer, total_steps=20, batch_size=2,
                                        start_step=0, stream=io.StringIO())
  png = tmp_path / "metrics" / "learning_curves.png"
  _train(reporter, range(1, 11), log_period=5)
  assert not png.exists()  # training reports alone do not redraw it
  writer.write(reporting.INFER_EVAL, 10, {"rte/accuracy": 50.0})
  # Three panels (loss, learning_rate, rte/accuracy) of 5 x 3.5 inches at 100 dpi, in a row.
  assert png_size(png) == report.figure_size(3) == (1500, 350)
  png.unlink()
  _train(reporter, range(11, 21), log_period=5)
  writer.write(reporting.TRAIN_EVAL, 20, {"rte/loss": 0.5})
  assert png_size(png) == (1500, 700)  # a fourth panel, train_eval/rte/loss: two rows
  png.unlink()
  writer.close()  # the end of the run draws the final state
  assert png_size(png) == (1500, 700)


def test_evaluation_alone_draws_no_learning_curve(tmp_path):
  writer = reporting.MetricsWriter(model_dir=str(tmp_path), tensorboard=False)
  writer.write(reporting.INFER_EVAL, 10, {"rte/accuracy": 50.0})
  writer.close()
  assert not (tmp_path / "metrics" / "learning_curves.png").exists()


def test_resuming_moves_rows_past_the_start_step_aside(tmp_path):
  metrics = tmp_path / "metrics"
  killed = reporting.MetricsWriter(model_dir=str(tmp_path), tensorboard=False)
  for step in (10, 20, 30, 40, 50):
    killed.write(reporting.TRAIN, step, {"loss": step / 10})
  killed.write(reporting.INFER_EVAL, 20, {"rte/accuracy": 60.0})
  killed.write(reporting.INFER_EVAL, 40, {"rte/accuracy": 70.0})
  with open(metrics / "train.jsonl", "a") as f:
    f.write('{"loss": 6.0, "st')  # the kill cut this row short
  # The last checkpoint was step 30: training resumes there and replays 31..50.
  resumed = reporting.MetricsWriter(model_dir=str(tmp_path), tensorboard=False)
  reporter = reporting.TrainingReporter(writer=resumed, total_steps=50, batch_size=1,
                                        start_step=30, stream=io.StringIO())
  assert [r["step"] for r in reporting.read_jsonl(str(metrics / "train.jsonl"))] == [10, 20, 30]
  assert reporting.read_jsonl(str(metrics / "infer_eval.jsonl")) == [
      {"step": 20, "rte/accuracy": 60.0}]
  dropped = (metrics / "train.dropped.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in dropped[:2]] == [40, 50]
  assert dropped[2] == '{"loss": 6.0, "st'
  assert reporting.read_jsonl(str(metrics / "infer_eval.dropped.jsonl")) == [
      {"step": 40, "rte/accuracy": 70.0}]
  for step in range(31, 51):
    reporter.add({"loss": np.float32(step / 100)})
    if step % 10 == 0:
      reporter.report(step)
  records = reporting.read_jsonl(str(metrics / "train.jsonl"))
  assert [r["step"] for r in records] == [10, 20, 30, 40, 50]  # no step goes backwards
  assert [r["loss"] for r in records] == pytest.approx([1.0, 2.0, 3.0, 0.355, 0.455])
  # Resuming again at the same step finds nothing more to move.
  assert resumed.drop_rows_after(50) == 0


def test_eval_metrics_flatten_to_task_slash_metric():
  class Wrapped:
    value = 0.75
  flat = reporting.flatten_eval_metrics({"rte": {"accuracy": 80.0, "wrapped": Wrapped(),
                                                 "text": "not a number"}})
  assert flat == {"rte/accuracy": 80.0, "rte/wrapped": 0.75}


def test_log_lines_print_above_a_progress_bar(monkeypatch):
  monkeypatch.setenv(reporting.PROGRESS_ENV, "1")
  terminal = _Terminal()
  handler = reporting._AboveProgressBars(terminal)  # pylint: disable=protected-access
  handler.setFormatter(reporting.logging.Formatter("%(message)s"))
  with reporting.progress(total=4, desc="predict", stream=terminal) as bar:
    bar.update(2)
    handler.emit(reporting.logging.makeLogRecord({"msg": "eval at step 2"}))
    drawn = terminal.getvalue()
  # The bar is wiped (carriage return, blanks, carriage return), the line printed on a clean
  # line, and the bar drawn again at 2/4 below it.
  before, after = drawn.split("eval at step 2\n")
  assert before.endswith("\r") and before.rstrip("\r").endswith(" ")
  assert after.startswith("\rpredict:  50%") and " 2/4 " in after


def test_a_metric_of_several_tasks_also_gets_its_average():
  flat = reporting.flatten_eval_metrics({"rte": {"accuracy": 60.0, "f1": 50.0},
                                         "cb": {"accuracy": 80.0}, "copa": {"accuracy": 70.0}})
  assert flat == {"rte/accuracy": 60.0, "rte/f1": 50.0, "cb/accuracy": 80.0,
                  "copa/accuracy": 70.0, "average/accuracy": 70.0}
  assert reporting.flatten_eval_metrics({"rte": {"accuracy": 60.0}}) == {"rte/accuracy": 60.0}


def test_last_eval_metrics_reads_the_last_record_and_names_each_bad_file(tmp_path):
  path = reporting.metrics_file(str(tmp_path), "infer_eval")
  assert path == str(tmp_path / "metrics" / "infer_eval.jsonl")
  with pytest.raises(ValueError, match="No evaluation metrics file .*has that eval stage"):
    reporting.last_eval_metrics(str(tmp_path))
  os.makedirs(os.path.dirname(path))
  with open(path, "w") as f:
    f.write("\n")
  with pytest.raises(ValueError, match="infer_eval.jsonl is empty"):
    reporting.last_eval_metrics(path)
  with open(path, "w") as f:
    f.write('{"step": 10, "a/accuracy": 50}\n{"step": 20, "a/accuracy": 75.5, "b/f1": 3}\n\n')
  expected = {"a/accuracy": 75.5, "b/f1": 3.0}
  assert reporting.last_eval_metrics(path) == expected
  assert reporting.last_eval_metrics(str(tmp_path)) == expected  # the run folder
  with open(path, "a") as f:
    f.write('{"step": 30, "a/acc\n')
  with pytest.raises(ValueError, match="last line of .*infer_eval.jsonl is not a JSON record"):
    reporting.last_eval_metrics(path)
