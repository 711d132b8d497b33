"""Compile-only memory plan of a rotary decoder's prompt-tuning step on a pod-slice mesh.

Builds the trainer's step (`make_train_step` over `DecoderOnlyModel.loss_fn`, a `Prompt` hook,
Adafactor on the prompt only) for a preset such as `llama3_1_8b` in bfloat16, shards it with a
`gin/partitioning/` preset on a CPU host split into that preset's device count, compiles it
ahead of time from abstract shapes (nothing of the model is allocated) and prints XLA's
per-device memory accounting against the slice's HBM.

What it shows: the 8B step compiles under the preset's shardings, and the per-device arguments
(the sharded frozen weights: 0.94 GiB for Llama 3.1 8B on 16 devices) are exact. The
temporaries are XLA:CPU's, an upper bound several times what a TPU would use: XLA:CPU upcasts
bf16 matmul operands (so gathered weights are float32 copies) and schedules without an HBM
limit (measured: 29.4 GiB at batch 32 x 612 tokens, 19.1 GiB at batch 8). A TPU figure needs
the TPU compiler (an AOT compile for a `v5e:4x4` topology with libtpu), not run here.

  python -m benchmarks.rotary_memory_plan --preset llama3_1_8b \
      --partitioning gin/partitioning/fsdp_tp_8b_v5e_16.gin --hbm_gib 16
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from prompt_tuning.engine import host_devices


def _device_count(partitioning_file: str) -> int:
  match = re.search(r"expected_device_count\s*=\s*(\d+)", open(partitioning_file).read())
  if match is None:
    raise ValueError(f"{partitioning_file} binds no MeshConfig.expected_device_count.")
  return int(match.group(1))


def plan(*, preset: str, partitioning_file: str, batch: int, length: int, prompt_length: int,
         remat: str) -> dict:
  """Compiles the step; returns XLA's per-device byte counts."""
  # pylint: disable=g-import-not-at-top  (JAX must start after the device count is set)
  import flax.linen as nn
  import gin
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec
  from prompt_tuning.engine import optimizers, partitioning, train_state
  from prompt_tuning.engine.models import DecoderOnlyModel
  from prompt_tuning.models.llama import LlamaDecoder
  from prompt_tuning.models.llama_config import get_llama_config
  from prompt_tuning.prompts import hooks, providers

  gin.external_configurable(partitioning.MeshConfig, module="partitioning")
  gin.parse_config_file(partitioning_file)
  mesh_config = gin.get_configurable("partitioning.MeshConfig")()
  mesh, rules = mesh_config.make_mesh(), mesh_config.axis_rules()
  config = get_llama_config(preset, dtype="bfloat16", param_dtype="bfloat16",
                            remat_policy=remat)
  hook = hooks.PromptHook(provider=providers.Prompt(length=prompt_length))
  model = DecoderOnlyModel(LlamaDecoder(config=config, input_hook=hook))
  boxed = jax.eval_shape(lambda rng: model.get_initial_variables(
      rng, batch_size=batch, decoder_length=length), jax.random.PRNGKey(0))["params"]
  shardings = partitioning.param_shardings(abstract_params=boxed, mesh=mesh, rules=rules)
  trainable, frozen = train_state.split_params(params=nn.meta.unbox(boxed),
                                               patterns=train_state.PROMPT_ONLY)
  _, frozen_sh = train_state.split_params(params=shardings, patterns=train_state.PROMPT_ONLY)
  optimizer = optimizers.adafactor()
  state = jax.eval_shape(lambda t: train_state.create_train_state(
      trainable_params=t, optimizer=optimizer, rng=jax.random.PRNGKey(1)), trainable)
  replicated = NamedSharding(mesh, PartitionSpec())
  state_sh = jax.tree.map(lambda _: replicated, state)  # the prompt and its slots are tiny
  batch_sh = partitioning.batch_sharding(mesh=mesh)
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  batch_abs = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
               "decoder_loss_weights": jax.ShapeDtypeStruct((batch, length), jnp.float32)}
  step = train_state.make_train_step(loss_fn=model.loss_fn, optimizer=optimizer)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = jax.jit(step, in_shardings=(state_sh, frozen_sh, {k: batch_sh for k in batch_abs}),
                       out_shardings=(state_sh, replicated),
                       donate_argnums=(0,)).lower(state, frozen, batch_abs).compile()
  stats = compiled.memory_analysis()
  return {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
          "temporaries": stats.temp_size_in_bytes, "aliased": stats.alias_size_in_bytes}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="llama3_1_8b")
  parser.add_argument("--partitioning", default="gin/partitioning/fsdp_tp_8b_v5e_16.gin")
  parser.add_argument("--hbm_gib", type=float, default=16.0, help="HBM of one device")
  parser.add_argument("--batch", type=int, default=32, help="global batch")
  parser.add_argument("--length", type=int, default=512, help="tokens per example")
  parser.add_argument("--prompt_length", type=int, default=100)
  parser.add_argument("--remat", default="full", choices=("none", "full", "dots"))
  args = parser.parse_args(argv)
  if not os.path.isfile(args.partitioning):
    parser.error(f"partitioning file {args.partitioning} does not exist")
  host_devices.configure(_device_count(args.partitioning))
  sizes = plan(preset=args.preset, partitioning_file=args.partitioning, batch=args.batch,
               length=args.length, prompt_length=args.prompt_length, remat=args.remat)
  total = sizes["arguments"] + sizes["outputs"] + sizes["temporaries"] - sizes["aliased"]
  print(f"{args.preset}, {os.path.basename(args.partitioning)} on CPU devices, "
        f"batch {args.batch} x {args.length} tokens + {args.prompt_length} prompt, "
        f"remat {args.remat}")
  print(f"{'per device':<14}{'GiB':>8}")
  for name, value in list(sizes.items()) + [("total", total)]:
    print(f"{name:<14}{value / 2 ** 30:>8.2f}")
  fits = total <= args.hbm_gib * 2 ** 30
  print(f"{'HBM':<14}{args.hbm_gib:>8.2f}  -> {'fits' if fits else 'over'} "
        "(XLA:CPU temporaries: an upper bound, see the module docstring)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
