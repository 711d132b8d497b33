"""Our training steps, built from the library's own pieces, ready to time.

Both steps are the library's `make_train_step` over `EncoderDecoderModel.loss_fn` with a
`PromptHook(Prompt)` input hook and Adafactor:
  * prompt tuning: only `input_hook/prompt` is trainable; the frozen weights are a separate,
    non-differentiated argument of the jitted step;
  * full fine-tuning: every parameter (prompt included) is trainable, with T5's fine-tuning
    Adafactor settings (parameter-scale multiplication, learning rate 1e-3).
The step is compiled ahead of time so that compilation is never timed and XLA's memory analysis
of the exact executable can be reported. Given a mesh (e.g. a CPU host split into several devices
with `--host_devices`), the step runs data-parallel as the trainer runs it: the batch split over
the mesh's data axis, parameters and optimizer state replicated.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh, NamedSharding, PartitionSpec
from benchmarks.shapes import BenchShape
from prompt_tuning.engine import optimizers, partitioning, train_state
from prompt_tuning.engine.models import EncoderDecoderModel
from prompt_tuning.models import layers
from prompt_tuning.models.t5 import EncoderDecoder
from prompt_tuning.prompts import hooks, providers


@dataclasses.dataclass
class CompiledStep:
  """A step that can be run repeatedly; `run()` executes one step, waits, returns its metrics."""

  run: Callable[[], Any]
  xla_bytes: Optional[int]  # arguments + outputs + temporaries over all devices, from XLA


def random_batch(shape: BenchShape, seed: int = 0) -> dict[str, np.ndarray]:
  """Random token ids (never padding) with every target token weighted."""
  rng = np.random.default_rng(seed)
  vocab = shape.config.vocab_size
  targets = rng.integers(2, vocab, (shape.batch, shape.target_length), dtype=np.int32)
  return {
      "encoder_input_tokens": rng.integers(2, vocab, (shape.batch, shape.input_length),
                                           dtype=np.int32),
      "decoder_input_tokens": np.concatenate(
          [np.zeros((shape.batch, 1), np.int32), targets[:, :-1]], axis=1),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": np.ones((shape.batch, shape.target_length), np.float32),
  }


def _model(shape: BenchShape, dtype: str) -> EncoderDecoderModel:
  hook = hooks.PromptHook(provider=providers.Prompt(length=shape.prompt_length))
  module = EncoderDecoder(config=shape.config.replace(dtype=dtype), input_hook=hook)
  return EncoderDecoderModel(module)


def _memory_bytes(compiled, num_devices: int) -> Optional[int]:
  """XLA's accounting of one device's program, times the devices that each run a copy."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # Not every backend reports it; the benchmark then shows RSS only.
    return None
  if stats is None:
    return None
  return num_devices * int(stats.argument_size_in_bytes + stats.output_size_in_bytes
                           + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def random_params(shape: BenchShape, seed: int = 0) -> dict:
  """Random parameters of the right shapes, drawn with numpy.

  Values only need to be well scaled (speed does not depend on them), so this skips compiling
  the model's own initialiser, which takes longer than compiling the training step itself.
  """
  model = _model(shape, "float32")  # parameters are float32 whatever the compute dtype
  abstract = jax.eval_shape(
      lambda rng: model.get_initial_variables(
          rng, batch_size=shape.batch, encoder_length=shape.input_length,
          decoder_length=shape.target_length),
      jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    std = 1.0 if ("embedding" in name or len(leaf.shape) != 2) else leaf.shape[0] ** -0.5
    values = rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(std)
    return jnp.asarray(values, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(abstract["params"]))


def make_step(shape: BenchShape, *, dtype: str, full_finetune: bool,
              params: Optional[dict] = None, frozen_compute_copies: bool = False):
  """The uncompiled step and its arguments: `(step_fn, state, frozen, batch)`.

  Args:
    shape: model and batch dimensions.
    dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
    full_finetune: train every parameter instead of the prompt only.
    params: parameters to use (e.g. shared between steps, which saves gigabytes at base size);
      random ones by default. They are never donated: the step trains a copy of its part.
    frozen_compute_copies: pass the frozen kernels and embeddings to the step already in the
      compute dtype (`layers.compute_dtype_copies`, made once, outside the step), as a
      trainer keeping bf16 copies of its frozen weights would; same results, fewer converts.
  """
  model = _model(shape, dtype)
  batch = jax.tree.map(jnp.asarray, random_batch(shape))
  if params is None:
    params = random_params(shape)
  if full_finetune:
    patterns = train_state.EVERYTHING
    optimizer = optimizers.adafactor(learning_rate=1e-3, multiply_by_parameter_scale=True)
  else:
    patterns = train_state.PROMPT_ONLY
    optimizer = optimizers.adafactor()
  trainable, frozen = train_state.split_params(params=params, patterns=patterns)
  if frozen_compute_copies:
    frozen = layers.compute_dtype_copies(frozen, dtype)
  trainable = jax.tree.map(jnp.copy, trainable)  # the step donates its state
  state = train_state.create_train_state(trainable_params=trainable, optimizer=optimizer,
                                         rng=jax.random.PRNGKey(1))
  step_fn = train_state.make_train_step(loss_fn=model.loss_fn, optimizer=optimizer)
  return step_fn, state, frozen, batch


def data_parallel_mesh(num_devices: int) -> Mesh:
  """The trainer's default mesh (all devices on the data axis) over the first `num_devices`."""
  devices = jax.devices()
  if num_devices > len(devices):
    raise ValueError(f"A {num_devices}-device mesh was asked for but JAX has {len(devices)} "
                     "device(s); on a CPU host, split it with --host_devices.")
  return partitioning.MeshConfig().make_mesh(devices=devices[:num_devices])


def replicate(tree: Any, mesh: Mesh) -> Any:
  """`tree` with every array on each device of `mesh` (a no-op for arrays already there)."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def build_step(shape: BenchShape, *, dtype: str, full_finetune: bool,
               params: Optional[dict] = None, mesh: Optional[Mesh] = None,
               compiler_options: Optional[dict[str, Any]] = None,
               frozen_compute_copies: bool = False) -> CompiledStep:
  """Compiles one prompt-tuning or full fine-tuning step of a random model (see `make_step`).

  With `mesh`, the batch is split over its data axis and everything else is replicated (the
  benchmarked models have no model-parallel axis). `compiler_options` are XLA options for this
  compilation only (e.g. CPU flags under test), named as in `XLA_FLAGS` without the dashes.
  """
  step_fn, state, frozen, batch = make_step(shape, dtype=dtype, full_finetune=full_finetune,
                                            params=params,
                                            frozen_compute_copies=frozen_compute_copies)
  if mesh is None:
    jitted = jax.jit(step_fn, donate_argnums=(0,))
  else:
    if shape.batch % mesh.size:
      raise ValueError(f"Batch {shape.batch} of shape {shape.name!r} does not split over "
                       f"{mesh.size} devices.")
    replicated = NamedSharding(mesh, PartitionSpec())
    split = partitioning.batch_sharding(mesh=mesh)
    state, frozen = replicate((state, frozen), mesh)
    batch = jax.device_put(batch, split)
    jitted = jax.jit(step_fn, donate_argnums=(0,), in_shardings=(replicated, replicated, split),
                     out_shardings=(replicated, replicated))
  compiled = jitted.lower(state, frozen, batch).compile(compiler_options=compiler_options)
  holder = {"state": state}

  def run() -> Any:
    holder["state"], metrics = compiled(holder["state"], frozen, batch)
    return jax.block_until_ready((holder["state"], metrics))[1]

  num_devices = 1 if mesh is None else mesh.size
  return CompiledStep(run=run, xla_bytes=_memory_bytes(compiled, num_devices))
