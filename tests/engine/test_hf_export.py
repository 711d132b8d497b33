"""Export to Hugging Face T5 + PEFT: transformers reproduces our logits and greedy decodes.

The base is the real T5X test checkpoint (T5 1.1 tiny, untied logits, gated GELU), placed as a
step of a run so the export goes to its default folder. Our side reads the T5X checkpoint
itself, never the export, so a wrong name or transposition in the export shows as a mismatch.
"""
import json
import shutil
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the export parity test needs torch")
transformers = pytest.importorskip("transformers", reason="the export parity test needs it")
peft = pytest.importorskip("peft", reason="the export parity test needs peft")

# pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning import export_hf
from prompt_tuning import infer as infer_lib
from prompt_tuning.engine import checkpoint_import, export, gin_utils, hf_export
from prompt_tuning.models import config as model_config
from prompt_tuning.models.t5 import EncoderDecoder

REPO = Path(__file__).resolve().parents[2]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"
TASK = "smoke_last_digit"
LENGTHS = {"inputs": 16, "targets": 4}
EXAMPLES = 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A run-shaped step holding the T5X base, its export, and a prompt adapter over it."""
  root = tmp_path_factory.mktemp("hf")
  step = root / "run" / "checkpoints" / "7" / "params"
  shutil.copytree(T5X_TINY, step)
  folder = export_hf.main(["--gin_file=gin/models/t5_1_1_tiny.gin", f"--checkpoint={step}"])
  prompt = np.random.default_rng(3).normal(0, 0.5, (3, 4)).astype(np.float32)
  np.save(root / "prompt.npy", prompt)
  adapter = root / "adapter"
  export.export_peft_prompt(prompt=prompt, directory=str(adapter), num_layers=2,
                            num_attention_heads=2, base_model_name_or_path=str(step))
  return dict(root=root, step=step, folder=folder, adapter=adapter, prompt=prompt)


def test_export_goes_beside_the_run_and_the_adapter_names_it(exported):
  assert exported["folder"] == str(exported["root"] / "run" / "hf_export" / "checkpoint_7")
  with open(Path(exported["folder"]) / "config.json") as f:
    config = json.load(f)
  assert (config["d_model"], config["num_heads"], config["d_kv"], config["d_ff"]) == (4, 2, 2, 8)
  assert (config["feed_forward_proj"], config["tie_word_embeddings"]) == ("gated-gelu", False)
  with open(exported["adapter"] / "adapter_config.json") as f:
    adapter = json.load(f)
  assert adapter["base_model_name_or_path"] == exported["folder"]
  assert hf_export.hf_folder_for(str(exported["step"])) == exported["folder"]
  # Our importer reads the export back to the original arrays, bit for bit.
  original = checkpoint_import.open_checkpoint(str(T5X_TINY))
  back = checkpoint_import.open_checkpoint(exported["folder"])
  assert set(back.entries()) == set(original.entries())
  for name in original.entries():
    np.testing.assert_array_equal(back.read(name), original.read(name).astype(np.float32))


def _encoder_inputs():
  import seqio
  from prompt_tuning.smoke_data import tasks  # pylint: disable=unused-import
  dataset = seqio.get_mixture_or_task(TASK).get_dataset(
      sequence_length=LENGTHS, split="validation", shuffle=False).take(EXAMPLES)
  rows = [list(ex["inputs"]) for ex in dataset.as_numpy_iterator()]
  ids = np.zeros((len(rows), max(len(r) for r in rows)), np.int64)
  for i, row in enumerate(rows):
    ids[i, :len(row)] = row
  return ids


def test_transformers_gives_our_logits(exported):
  hf_model = transformers.T5ForConditionalGeneration.from_pretrained(exported["folder"]).eval()
  config = model_config.get_config("t5_1_1_tiny")
  model = EncoderDecoder(config=config)
  tokens = jnp.ones((1, 4), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)["params"]
  params = checkpoint_import.import_checkpoint(str(T5X_TINY), abstract_params=abstract)
  encoder = _encoder_inputs()
  decoder = np.random.default_rng(0).integers(2, 300, (encoder.shape[0], 5))
  decoder[:, 0] = 0
  ours = model.apply({"params": params}, jnp.asarray(encoder, jnp.int32),
                     jnp.asarray(decoder, jnp.int32))
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.from_numpy(encoder),
                      attention_mask=torch.from_numpy((encoder > 0).astype(np.int64)),
                      decoder_input_ids=torch.from_numpy(decoder)).logits.numpy()
  assert theirs.shape == (EXAMPLES, 5, 32128)
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4)


def test_transformers_with_peft_decodes_what_our_infer_decodes(exported, tmp_path):
  args = ([f"--gin_file={f}" for f in ("gin/models/t5_1_1_tiny.gin", "gin/prompts/from_file.gin",
                                       "gin/runs/infer.gin")]
          + [f"--gin.{k}={v}" for k, v in {
              "CHECKPOINT_DIR": "None", "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
              "PROMPT_FILE": repr(str(exported["root"] / "prompt.npy")), "PROMPT_LENGTH": "3",
              "INFER_OUTPUT_DIR": repr(str(tmp_path)), "MIXTURE_OR_TASK_NAME": repr(TASK),
              "TASK_MODULE": "'prompt_tuning.smoke_data.tasks'",
              "TASK_FEATURE_LENGTHS": repr(LENGTHS), "BATCH_SIZE": "8",
              "infer.num_examples": str(EXAMPLES)}.items()])
  [path] = infer_lib.main(args)
  ours = [json.loads(line)["tokens"] for line in open(path)]
  base = transformers.T5ForConditionalGeneration.from_pretrained(exported["folder"]).eval()
  model = peft.PeftModel.from_pretrained(base, str(exported["adapter"])).eval()
  np.testing.assert_array_equal(
      model.prompt_encoder["default"].embedding.weight.detach().numpy(), exported["prompt"])
  encoder = _encoder_inputs()
  with torch.no_grad():
    generated = model.generate(
        input_ids=torch.from_numpy(encoder),
        attention_mask=torch.from_numpy((encoder > 0).astype(np.int64)),
        max_new_tokens=LENGTHS["targets"], do_sample=False, num_beams=1).numpy()
  theirs = [[int(t) for t in row[1:] if t] for row in generated]  # drop the start token 0
  assert len(ours) == EXAMPLES
  assert theirs == ours
  assert all(len(tokens) >= 1 for tokens in ours)


@pytest.mark.parametrize("prompt_file, bindings, expected", [
    ("random_uniform.gin", {}, {"prompt_tuning_init": "RANDOM"}),
    ("sampled_vocabulary.gin", {}, {"prompt_tuning_init": "SAMPLE_VOCAB"}),
    ("from_string.gin", {"PROMPT_TEXT": "'Is it true?'"},
     {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "Is it true?"}),
    ("class_labels.gin", {"CLASS_LABELS": "['yes', 'no']"}, {"prompt_tuning_init": "RANDOM"}),
])
def test_peft_init_names_the_initialiser(prompt_file, bindings, expected):
  gin_utils.register_configurables()
  gin.clear_config()
  try:
    gin_utils.parse_gin(gin_files=["gin/models/t5_1_1_tiny.gin", f"gin/prompts/{prompt_file}"],
                        gin_bindings=["INITIAL_CHECKPOINT_PATH=None"]
                        + [f"{k}={v}" for k, v in bindings.items()])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert export.peft_init_fields(model) == expected


def test_text_init_is_written_for_peft_with_the_base_folder_as_tokenizer(exported, tmp_path):
  export.export_peft_prompt(prompt=exported["prompt"], directory=str(tmp_path), num_layers=2,
                            num_attention_heads=2, base_model_name_or_path=exported["folder"],
                            prompt_tuning_init="TEXT", prompt_tuning_init_text="Is it true?")
  config = peft.PeftConfig.from_pretrained(str(tmp_path))
  assert config.prompt_tuning_init == "TEXT"
  assert config.prompt_tuning_init_text == "Is it true?"
  assert config.tokenizer_name_or_path == exported["folder"]


def test_a_prompt_only_checkpoint_cannot_be_exported(tmp_path):
  with pytest.raises(ValueError, match=r"^The parameters lack 'decoder/layers_0/self_attention/"
                     r"key/kernel', needed for the Hugging Face tensor decoder.block.0.layer.0."
                     r"SelfAttention.k.weight; export a full checkpoint \(a base or fine-tuned "
                     r"run\), not a prompt-only step.$"):
    hf_export.export_hf_t5(config=model_config.get_config("t5_1_1_tiny"),
                           read=lambda name: (_ for _ in ()).throw(KeyError(name)),
                           directory=str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
