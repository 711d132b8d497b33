"""The `lm_` tasks' tokenizer as a gin setting: `--gin.LM_TOKENIZER=...` on the pipeline reaches
both stages and registers the tasks when the run builds its dataset configs; with neither it
nor PROMPT_TUNING_LM_TOKENIZER set, the run stops with one sentence naming both."""
import os

import gin
import pytest
import seqio

from prompt_tuning.engine import data as data_lib
from prompt_tuning.methods.decoder_rank import json_vocabulary
from prompt_tuning.methods.decoder_rank import tasks as rank_tasks
from tests.pipelines import dry_run

pytest.importorskip("tokenizers", reason="tokenizer.json files need `tokenizers`")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
PRESET = "gin/methods/decoder_rank/decoder_rank_llama3_1_8b_v5e_16.gin"
TRAIN = "lm_super_glue_v102_proportional"


@pytest.fixture(autouse=True)
def _fresh_lm_tasks(monkeypatch):
  """Runs each test in the repo root with no `lm_` tasks registered, and removes what it
  registers (the names are process-wide)."""
  monkeypatch.chdir(ROOT)
  monkeypatch.delenv(rank_tasks.LM_TOKENIZER_ENV, raising=False)
  monkeypatch.setattr(rank_tasks, "_REGISTERED_LM", {})

  def lm_names():
    return ({n for n in seqio.TaskRegistry.names() if n.startswith("lm_")},
            {n for n in seqio.MixtureRegistry.names() if n.startswith("lm_")})

  def remove(tasks, mixtures):
    for name in mixtures:
      seqio.MixtureRegistry.remove(name)
    for name in tasks:
      seqio.TaskRegistry.remove(name)

  saved = {n: seqio.TaskRegistry.get(n) for n in lm_names()[0]}
  saved_mixtures = {n: seqio.MixtureRegistry.get(n) for n in lm_names()[1]}
  remove(*lm_names())
  yield
  remove(*lm_names())
  for name, task in saved.items():
    seqio.TaskRegistry.add_provider(name, task)
  for name, mixture in saved_mixtures.items():
    seqio.MixtureRegistry.add_provider(name, mixture)


def _stage_args(tmp_path, extra=()):
  argv = [f"--gin_file={PRESET}", f"--pipeline_dir={tmp_path}",
          "--gin.BASE_CHECKPOINT='/ckpts/hf_model'", *extra]
  _, runner, _ = dry_run.plan(argv)
  return {s.name: runner.resolve(s, dry_run=True).args for s in runner.plan.stages}


def _parse(args):
  dry_run.parse_stage(args)


def _dataset_config(name):
  return data_lib.DatasetConfig(mixture_or_task_name=name,
                                task_feature_lengths={"inputs": 8, "targets": 4},
                                split="validation", batch_size=2,
                                module="prompt_tuning.methods.decoder_rank.tasks")


def test_gin_setting_registers_the_tasks_in_both_stages(tokenizer_json, tmp_path):
  binding = f"--gin.LM_TOKENIZER='{tokenizer_json.path}'"
  stages = _stage_args(tmp_path, [binding])
  for name in ("prompt", "rank_eval"):
    _parse(stages[name])
    assert TRAIN not in seqio.MixtureRegistry.names() or name == "rank_eval"
    key = "train.train_dataset_cfg" if name == "prompt" else "evaluate.dataset_cfg"
    config = gin.query_parameter(key).scoped_configurable_fn()
    assert config.module == "prompt_tuning.methods.decoder_rank.tasks"
    # Building the dataset config registered the tasks in that tokenizer.
    task = seqio.get_mixture_or_task(config.mixture_or_task_name)
    assert data_lib.get_mixture_or_task(config) is task
  vocabulary = seqio.get_mixture_or_task(
      "lm_super_glue_rte_v102").output_features["targets"].vocabulary
  assert isinstance(vocabulary, json_vocabulary.TokenizerJsonVocabulary)
  assert vocabulary.encode("!") == [0]  # id 0 is a real token here, as in Llama 3
  gin.clear_config()


def test_neither_setting_stops_with_one_sentence_naming_both(tmp_path):
  stages = _stage_args(tmp_path)
  _parse(stages["prompt"])
  config = gin.query_parameter("train.train_dataset_cfg").scoped_configurable_fn()
  gin.clear_config()
  with pytest.raises(ValueError) as error:
    data_lib.get_mixture_or_task(config)
  message = str(error.value)
  assert "LM_TOKENIZER=" in message and rank_tasks.LM_TOKENIZER_ENV in message
  assert TRAIN in message and "Unknown SeqIO task" not in message
  assert message.endswith(".") and message.count(". ") == 0  # one sentence
  # Tasks outside the `lm_` family keep the generic message.
  with pytest.raises(ValueError, match="Unknown SeqIO task or mixture 'nope_task'"):
    data_lib.get_mixture_or_task(_dataset_config("nope_task"))


def test_a_missing_or_changed_tokenizer_is_refused(tokenizer_json, tmp_path):
  stages = _stage_args(tmp_path, ["--gin.LM_TOKENIZER='/nowhere/tokenizer.json'"])
  _parse(stages["prompt"])
  with pytest.raises(FileNotFoundError, match="LM_TOKENIZER=/nowhere/tokenizer.json does not"):
    gin.query_parameter("train.train_dataset_cfg").scoped_configurable_fn()
  gin.clear_config()
  rank_tasks.register_lm_once(tokenizer_json.path)
  rank_tasks.register_lm_once(tokenizer_json.path)  # the same file again: nothing to do
  other = tmp_path / "tokenizer.model"
  other.write_text("")
  with pytest.raises(ValueError, match="already read .*cannot also read .*tokenizer.model"):
    rank_tasks.register_lm_once(str(other))
