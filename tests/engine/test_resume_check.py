"""Resuming with changed settings: unsound changes stop in one sentence, safe ones are logged."""
import logging

import gin
import pytest

from prompt_tuning.engine import resume_check

# The shape of a real operative config (`gin.operative_config_str()` of a prompt-tuning run).
SAVED = """\
# Macros:
# ==============================================================================
BATCH_SIZE = 8
EVAL_PERIOD = 10
PROMPT_LENGTH = 20
RANDOM_SEED = 0
TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 4}
TRAIN_STEPS = 40

# Parameters for adafactor:
# ==============================================================================
adafactor.decay_rate = 0.8
adafactor.learning_rate = 0.3

# Parameters for CheckpointConfig:
# ==============================================================================
CheckpointConfig.period = 10

# Parameters for Prompt:
# ==============================================================================
Prompt.initializer = @prompt_init.random_uniform()
Prompt.length = %PROMPT_LENGTH

# Parameters for random_uniform:
# ==============================================================================
random_uniform.scale = 0.5

# Parameters for train:
# ==============================================================================
train.eval_period = %EVAL_PERIOD
train.infer_eval_dataset_cfg = @validation/data.DatasetConfig()
train.log_period = 5
train.optimizer = @optimizers.adafactor()
train.random_seed = %RANDOM_SEED
train.total_steps = %TRAIN_STEPS
train.train_dataset_cfg = @train/data.DatasetConfig()

# Parameters for train/DatasetConfig:
# ==============================================================================
train/DatasetConfig.batch_size = %BATCH_SIZE
train/DatasetConfig.mixture_or_task_name = 'smoke_last_digit'
train/DatasetConfig.task_feature_lengths = %TASK_FEATURE_LENGTHS

# Parameters for validation/DatasetConfig:
# ==============================================================================
validation/DatasetConfig.batch_size = %BATCH_SIZE
validation/DatasetConfig.mixture_or_task_name = 'smoke_last_digit'
validation/DatasetConfig.split = 'validation'
"""


def _changed(text, **replacements):
  for old, new in replacements.values():
    assert old in text
    text = text.replace(old, new)
  return text


def _model_dir(tmp_path, config=SAVED, steps=(10,)):
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / "config.gin").write_text(config)
  for step in steps:
    (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
  return str(tmp_path)


def _check(model_dir, new, **kwargs):
  return resume_check.check_resume_config(model_dir=model_dir, new_config=new, **kwargs)


def test_unchanged_settings_resume(tmp_path):
  assert _check(_model_dir(tmp_path), SAVED) == []


@pytest.mark.parametrize("edit, listed", [
    (("PROMPT_LENGTH = 20", "PROMPT_LENGTH = 50"), "PROMPT_LENGTH (20 -> 50) [prompt shapes]"),
    (("BATCH_SIZE = 8", "BATCH_SIZE = 4"), "BATCH_SIZE (8 -> 4) [training data]"),
    (("train.optimizer = @optimizers.adafactor()", "train.optimizer = @optimizers.adam()"),
     "train.optimizer (@optimizers.adafactor() -> @optimizers.adam()) [optimizer]"),
    (("adafactor.learning_rate = 0.3", "adafactor.learning_rate = 1.0"),
     "adafactor.learning_rate (0.3 -> 1.0) [optimizer]"),
    (("'smoke_last_digit'\ntrain/DatasetConfig.task", "'other_task'\ntrain/DatasetConfig.task"),
     "train/DatasetConfig.mixture_or_task_name ('smoke_last_digit' -> 'other_task') "
     "[training data]"),
    (("RANDOM_SEED = 0", "RANDOM_SEED = 7"), "RANDOM_SEED (0 -> 7) [seed]"),
    (("'inputs': 32", "'inputs': 64"), "TASK_FEATURE_LENGTHS ({'inputs': 32, 'targets': 4} -> "
     "{'inputs': 64, 'targets': 4}) [training data]"),
])
def test_unsound_change_stops_with_one_sentence_naming_it(tmp_path, edit, listed):
  model_dir = _model_dir(tmp_path)
  with pytest.raises(resume_check.ResumeConfigError) as error:
    _check(model_dir, _changed(SAVED, e=edit))
  message = str(error.value)
  assert message == (f"The checkpoints in {model_dir} were trained with other settings that "
                     f"resuming cannot honour: {listed}; restore those values, or use a new "
                     "model_dir to start afresh.")
  assert (tmp_path / "config.gin").read_text() == SAVED  # nothing written


def test_several_unsound_changes_are_all_listed_safe_ones_not(tmp_path):
  new = _changed(SAVED, a=("PROMPT_LENGTH = 20", "PROMPT_LENGTH = 5"),
                 b=("BATCH_SIZE = 8", "BATCH_SIZE = 16"), c=("EVAL_PERIOD = 10", "EVAL_PERIOD = 2"))
  with pytest.raises(resume_check.ResumeConfigError, match=r"honour: BATCH_SIZE \(8 -> 16\) "
                     r"\[training data\]; PROMPT_LENGTH \(20 -> 5\) \[prompt shapes\]; restore"):
    _check(_model_dir(tmp_path), new)


def test_safe_changes_resume_with_a_log_line(tmp_path, caplog):
  new = _changed(SAVED, a=("EVAL_PERIOD = 10", "EVAL_PERIOD = 20"),
                 b=("TRAIN_STEPS = 40", "TRAIN_STEPS = 80"),
                 c=("train.log_period = 5", "train.log_period = 1"),
                 d=("CheckpointConfig.period = 10", "CheckpointConfig.period = 5"),
                 e=("random_uniform.scale = 0.5", "random_uniform.scale = 0.1"),
                 f=("validation/DatasetConfig.split = 'validation'",
                    "validation/DatasetConfig.split = 'test'"))
  with caplog.at_level(logging.INFO):
    changes = _check(_model_dir(tmp_path), new)
  assert [(c.name, c.kind) for c in changes] == [
      ("CheckpointConfig.period", "safe"), ("EVAL_PERIOD", "safe"), ("TRAIN_STEPS", "safe"),
      ("random_uniform.scale", "safe"), ("train.log_period", "safe"),
      ("validation/DatasetConfig.split", "safe")]
  assert "safe to change: CheckpointConfig.period (10 -> 5), EVAL_PERIOD (10 -> 20)" in caplog.text


def test_allow_accepts_a_named_unsound_change(tmp_path):
  new = _changed(SAVED, a=("adafactor.learning_rate = 0.3", "adafactor.learning_rate = 0.1"))
  changes = _check(_model_dir(tmp_path), new, allow=["adafactor.*"])
  assert [(c.name, c.kind, c.why) for c in changes] == [
      ("adafactor.learning_rate", "safe", "allowed explicitly")]


def test_fresh_start_or_missing_saved_config_is_not_checked(tmp_path, caplog):
  new = _changed(SAVED, a=("PROMPT_LENGTH = 20", "PROMPT_LENGTH = 50"))
  assert _check(_model_dir(tmp_path / "fresh", steps=()), new) == []  # no checkpoint yet
  model_dir = _model_dir(tmp_path / "old")
  (tmp_path / "old" / "config.gin").unlink()
  with caplog.at_level(logging.WARNING):
    assert _check(model_dir, new) == []
  assert "No config.gin in" in caplog.text


def test_real_gin_operative_config_round_trips():
  """The parser reads what gin writes: scopes, references, macros, multi-line values."""

  @gin.configurable("DatasetConfig", module="resume_check_test")
  def dataset(batch_size=1, lengths=None):
    return batch_size, lengths

  @gin.configurable("train", module="resume_check_test")
  def train(train_dataset_cfg=None, infer_eval_dataset_cfg=None, eval_period=1):
    return train_dataset_cfg, infer_eval_dataset_cfg, eval_period

  def operative(batch, eval_period):
    gin.clear_config()
    gin.parse_config(f"""
        BS = {batch}
        LENGTHS = {{'inputs': 512, 'targets': 16}}
        resume_check_test.train.train_dataset_cfg = @train/resume_check_test.DatasetConfig()
        resume_check_test.train.infer_eval_dataset_cfg = \
            @validation/resume_check_test.DatasetConfig()
        resume_check_test.train.eval_period = {eval_period}
        train/resume_check_test.DatasetConfig.batch_size = %BS
        train/resume_check_test.DatasetConfig.lengths = %LENGTHS
        validation/resume_check_test.DatasetConfig.batch_size = 2
    """)
    train()
    return gin.operative_config_str()

  try:
    saved = resume_check.parse_config(operative(8, 10))
    assert saved["BS"] == 8 and saved["LENGTHS"] == {"inputs": 512, "targets": 16}
    assert repr(saved["train/DatasetConfig.batch_size"]) == "%BS"
    changes = resume_check.compare(saved, resume_check.parse_config(operative(4, 20)))
  finally:
    gin.clear_config()
    # gin keeps configurables for the whole process; these two would make the real entry
    # point's 'train' an ambiguous selector for every later test.
    for selector in ("resume_check_test.train", "resume_check_test.DatasetConfig"):
      gin.config._REGISTRY.pop(selector)  # pylint: disable=protected-access
  assert [(c.name, c.kind, c.why) for c in changes] == [
      ("BS", "unsound", "training data"), ("train.eval_period", "safe", "evaluation")]
