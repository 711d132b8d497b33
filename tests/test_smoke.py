"""The README's first command, `python -m prompt_tuning.smoke`: a real learning signal on CPU.

Runs the job once (a shorter prompt stage than the default) and checks the numbers it reports
and the files it leaves.
"""
import json
import shlex

import numpy as np
import pytest

from prompt_tuning import eval as eval_lib
from prompt_tuning import smoke
from prompt_tuning.engine import checkpoint_import, export, reporting

pytestmark = pytest.mark.slow  # runs the whole CPU smoke job


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  work_dir = tmp_path_factory.mktemp("smoke") / "run"
  report = smoke.main(["--work_dir", str(work_dir), "--prompt_steps", "100"])
  return report, work_dir


def test_prompt_tuning_shows_a_clear_learning_signal(job):
  report, _ = job
  assert report.prompt_loss[1] < 0.7 * report.prompt_loss[0]
  assert report.accuracy_before < 3 * smoke.CHANCE_ACCURACY  # the frozen model alone: ~chance
  assert report.accuracy_after >= report.accuracy_before + 30
  assert report.accuracy_after >= 4 * smoke.CHANCE_ACCURACY
  assert smoke.shows_learning(report)


def test_the_base_model_learned_its_skills_first(job):
  report, _ = job
  assert report.base_loss[1] < 0.5 * report.base_loss[0]
  assert report.base_accuracy > 50.0  # four answer kinds, ten digits: chance is ~10%


def test_prompt_is_exported_as_npy_and_peft_adapter(job):
  report, work_dir = job
  npy = work_dir / "prompt" / "numpy_checkpoints" / "checkpoint_100" / "input_hook.prompt.npy"
  adapter = work_dir / "prompt" / "peft_adapters" / "checkpoint_100"
  assert str(npy) in report.exports and str(adapter) in report.exports
  prompt = np.load(npy)
  assert prompt.shape == (8, 64) and prompt.dtype == np.float32
  np.testing.assert_array_equal(export.load_peft_prompt(directory=str(adapter)), prompt)
  # The prompt run saved only the prompt; its record points at the frozen base.
  step_dir = work_dir / "prompt" / "checkpoints" / "100"
  saved = checkpoint_import.read_checkpoint_array(str(step_dir / "params"), "input_hook/prompt")
  np.testing.assert_array_equal(saved, prompt)
  with open(step_dir / "run" / "metadata") as f:
    record = json.load(f)
  assert record["base_checkpoint"]["path"] == report.base_checkpoint


def test_report_lines_carry_the_numbers(job):
  report, _ = job
  lines = report.lines()
  assert lines[0] == "prompt_tuning smoke report"
  assert (f"held-out accuracy: {report.accuracy_before:.1f}% before -> "
          f"{report.accuracy_after:.1f}% after (chance 10%)") in lines[3]
  assert report.seconds < 300


def test_held_out_accuracy_comes_from_the_seqio_evaluator_metrics(job):
  report, work_dir = job
  records = reporting.read_jsonl(str(work_dir / "prompt" / "metrics" / "infer_eval.jsonl"))
  assert [r["step"] for r in records] == [0, 100]
  assert records[0]["smoke_last_digit/accuracy"] == report.accuracy_before
  assert records[1]["smoke_last_digit/accuracy"] == report.accuracy_after


def test_a_used_work_dir_is_refused(job):
  _, work_dir = job
  with pytest.raises(ValueError, match="is not empty; pass a new --work_dir"):
    smoke.run(work_dir=str(work_dir))


def test_report_prints_commands_that_reproduce_the_runs(job, tmp_path):
  report, work_dir = job
  lines = report.lines()
  start = lines.index("  the same runs from the command line (run from the repository root):")
  base, prompt, evaluate = [line.strip() for line in lines[start + 1:start + 4]]
  assert shlex.split(base)[:3] == ["python", "-m", "prompt_tuning.train"]
  assert shlex.split(base)[3:] == smoke.base_args(model_dir=str(work_dir / "base"), steps=400)
  assert shlex.split(prompt)[3:] == smoke.prompt_args(
      model_dir=str(work_dir / "prompt"), base_checkpoint=report.base_checkpoint, steps=100,
      prompt_length=8)
  # The eval command, run as printed (output elsewhere), measures the reported accuracy.
  args = [a for a in shlex.split(evaluate)[3:] if not a.startswith("--gin.EVAL_OUTPUT_DIR=")]
  metrics = eval_lib.main(args + [f"--gin.EVAL_OUTPUT_DIR={str(tmp_path)!r}"])
  assert metrics["smoke_last_digit/accuracy"] == pytest.approx(report.accuracy_after)


def test_the_adapter_loads_onto_the_exported_hugging_face_base(job):
  transformers = pytest.importorskip("transformers", reason="needs the 'test' extra")
  peft = pytest.importorskip("peft", reason="needs the 'test' extra")
  report, work_dir = job
  assert report.hf_base == str(work_dir / "base" / "hf_export" / "checkpoint_400")
  adapter = work_dir / "prompt" / "peft_adapters" / "checkpoint_100"
  with open(adapter / "adapter_config.json") as f:
    assert json.load(f)["base_model_name_or_path"] == report.hf_base
  base = transformers.T5ForConditionalGeneration.from_pretrained(report.hf_base)
  model = peft.PeftModel.from_pretrained(base, str(adapter))
  np.testing.assert_array_equal(model.prompt_encoder["default"].embedding.weight.detach().numpy(),
                                export.load_peft_prompt(directory=str(adapter)))
