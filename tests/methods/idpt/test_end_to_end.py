"""End to end (slow): the tiny pipeline and the demo, each with a handful of steps."""
import json

import pytest

from prompt_tuning import pipeline as pipeline_lib
from prompt_tuning.methods.idpt import demo


@pytest.mark.slow
@pytest.mark.e2e
def test_the_tiny_pipeline_runs_every_stage(tmp_path):
  outputs = pipeline_lib.main(["--gin_file=gin/methods/idpt/idpt_tiny.gin",
                               f"--pipeline_dir={tmp_path}", "--gin.LM_STEPS=4",
                               "--gin.STEPS=3"])
  assert sorted(outputs) == ["baseline", "distances", "idpt", "lm"]
  assert outputs["idpt"]["step"] == 3
  assert (tmp_path / "idpt" / "group_exports" / "checkpoint_3" / "generator.npz").exists()
  table = json.loads((tmp_path / "distances" / "prompt_distances.json").read_text())
  assert table["same template"]["pairs"] == 3 * 128 * 127 // 2
  assert table["other dataset"]["pairs"] == 3 * 128 * 128
  assert 0 < table["other dataset"]["mean"] < 2


@pytest.mark.slow
@pytest.mark.e2e
def test_the_demo_prints_one_row_per_method_and_the_distance_table(tmp_path):
  lines = demo.run(work_dir=str(tmp_path / "demo"), lm_steps=3, steps=2)
  rows = [line.split() for line in lines]
  for method in demo.METHODS:
    row = next(r for r, line in zip(rows, lines) if line.startswith(f"  {method} "))
    scores = [float(x) for x in row[len(method.split()):len(method.split()) + 4]]
    assert all(0 <= s <= 100 for s in scores)
  assert lines[2].split() == ["method", "first", "last", "second", "mean", "lr"]
  assert any(line.strip().startswith("same template") for line in lines)
  assert any(line.strip().startswith("other dataset") for line in lines)
