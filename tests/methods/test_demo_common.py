"""The demos' shared pieces: a generated source, the text postprocessor, the base run's argv."""
from prompt_tuning.methods import demo_common


def test_generated_source_yields_each_split_of_the_generator():
  data = {"train": {"inputs": ["a: 1", "b: 2"], "targets": ["1", "2"]},
          "validation": {"inputs": ["c: 3"], "targets": ["3"]}}
  source = demo_common.generated_source(data.__getitem__, {"train": 2, "validation": 1})
  assert source.splits == ("train", "validation")
  assert source.num_input_examples("train") == 2
  rows = list(source.get_dataset("train").as_numpy_iterator())
  assert [(r["inputs"], r["targets"]) for r in rows] == [(b"a: 1", b"1"), (b"b: 2", b"2")]


def test_strip_text_decodes_bytes_and_strips():
  assert demo_common.strip_text(b" yes\n") == "yes"
  assert demo_common.strip_text("  7 ") == "7"


def test_base_args_train_byte_t5_tiny_from_scratch_with_adam():
  args = demo_common.base_args("/runs/base", task="demo_task", module="demo.tasks",
                               lengths={"inputs": 16, "targets": 4}, steps=50)
  assert args == [
      "--gin_file=gin/models/byte_t5_tiny.gin", "--gin_file=gin/runs/finetune.gin",
      "--gin_file=gin/runs/smoke.gin", "--gin.MODEL_DIR='/runs/base'",
      "--gin.MIXTURE_OR_TASK_NAME='demo_task'", "--gin.TASK_MODULE='demo.tasks'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}", "--gin.TRAIN_STEPS=50",
      "--gin.CHECKPOINT_PERIOD=50", "--gin.EVAL_PERIOD=50", "--gin.DROPOUT_RATE=0.0",
      "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.train.optimizer=@optimizers.adam()",
      "--gin.optimizers.adam.learning_rate=0.003"]
