"""A resumed training run's metrics: the steps it replays replace the interrupted run's rows
instead of being appended after them, and the learning-curve PNG shows the run."""
import shutil

import numpy as np
import pytest

from prompt_tuning import train as train_lib
from prompt_tuning.engine import reporting
from tests.engine.test_entry_points import prompt_args
from tests.engine.test_reporting import png_size


@pytest.mark.slow  # two short training runs: about 30 s of CPU
def test_replayed_steps_replace_the_interrupted_runs_rows(tmp_path):
  model_dir = tmp_path / "run"
  args = prompt_args(model_dir, TRAIN_STEPS="6", CHECKPOINT_PERIOD="3")
  train_lib.main(args)
  metrics = model_dir / "metrics"
  first = reporting.read_jsonl(str(metrics / "train.jsonl"))
  assert [r["step"] for r in first] == [1, 2, 3, 4, 5, 6]
  # As if the run had been killed after reporting step 6 but before committing its checkpoint.
  shutil.rmtree(model_dir / "checkpoints" / "6")
  resumed = train_lib.main(args)
  assert resumed.train_history[0]["step"] == 4  # it resumed from the step-3 checkpoint
  records = reporting.read_jsonl(str(metrics / "train.jsonl"))
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # no step twice, none backwards
  dropped = reporting.read_jsonl(str(metrics / "train.dropped.jsonl"))
  assert [r["step"] for r in dropped] == [4, 5, 6]
  # Resuming is exact, so the replayed steps' losses are the interrupted run's.
  np.testing.assert_allclose([r["loss"] for r in records[3:]], [r["loss"] for r in dropped],
                             rtol=1e-6)
  assert png_size(metrics / "learning_curves.png") == (1000, 350)  # loss and learning rate
