r"""Export a base checkpoint as a Hugging Face T5 folder that `transformers` loads.

  python -m prompt_tuning.export_hf --gin_file=gin/models/byte_t5_tiny.gin \
    --checkpoint=/tmp/smoke/base/checkpoints/400/params

The model gin file gives the shapes (as for train / eval); `--checkpoint` is anything the
importer reads: a step of a base or fine-tuning run of this project, or a T5X checkpoint. The
folder defaults to `<model_dir>/hf_export/checkpoint_<step>` for a run's step (otherwise pass
`--output_dir`). Prompts exported afterwards as PEFT adapters over that base name the folder as
their `base_model_name_or_path`:

  model = transformers.T5ForConditionalGeneration.from_pretrained(FOLDER)
  model = peft.PeftModel.from_pretrained(model, "<prompt run>/peft_adapters/checkpoint_<N>")
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence


def model_config(gin_files: Sequence[str], gin_bindings: Sequence[str],
                 gin_search_paths: Sequence[str] = ()):
  """The `ModelConfig` of the model (`%MODEL`) the gin files describe."""
  import gin  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import gin_utils  # pylint: disable=g-import-not-at-top

  gin_utils.register_configurables()
  gin.clear_config()
  try:
    gin_utils.parse_gin(gin_files=gin_files, gin_bindings=gin_bindings,
                        gin_search_paths=gin_search_paths)
    try:
      model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    except ValueError:
      raise gin_utils.ConfigError("The gin files define no MODEL; pass a model file such as "
                                  "--gin_file=gin/models/t5_1_1_base.gin.") from None
    return model.module.config
  finally:
    gin.clear_config()


def main(argv: Sequence[str]) -> str:
  """Parses flags and exports; returns the folder written."""
  from prompt_tuning.engine import gin_utils, hf_export  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog="prompt_tuning.export_hf",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True,
                      help="the base: a run's step folder (or its params), or a T5X checkpoint")
  parser.add_argument("--output_dir", default=None,
                      help="default: <model_dir>/hf_export/checkpoint_<step> for a run's step")
  args, gin_args = parser.parse_known_args(list(argv))
  flags = gin_utils.parse_flags(gin_args, prog="prompt_tuning.export_hf",
                                description="gin flags of the model")
  output_dir = args.output_dir or hf_export.default_directory(args.checkpoint)
  if output_dir is None:
    raise gin_utils.ConfigError(f"Checkpoint {args.checkpoint} is not a step of a run of this "
                                "project, so there is no default folder; pass --output_dir.")
  from prompt_tuning.engine import quiet  # pylint: disable=g-import-not-at-top
  quiet.quiet_libraries()
  config = model_config(flags.gin_files, flags.gin_bindings, flags.gin_search_paths)
  folder = hf_export.export_checkpoint(config=config, checkpoint_path=args.checkpoint,
                                       directory=output_dir)
  print(f"Wrote a Hugging Face T5 folder to {folder}")
  return folder


def console_main(argv: Optional[List[str]] = None) -> None:
  """`python -m prompt_tuning.export_hf`: errors print as one sentence, exit 1."""
  try:
    main(sys.argv[1:] if argv is None else argv)
  except (ValueError, FileNotFoundError) as error:
    print(f"Error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
    raise SystemExit(1) from None


if __name__ == "__main__":
  console_main()
