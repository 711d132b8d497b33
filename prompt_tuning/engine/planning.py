"""Ahead-of-time plan of a run on a slice: per-device memory, step FLOPs, and whether it fits.

`plan_run` takes the arguments of `jobs.train.train` (what the train entry point's gin files
bind), builds the run's setup on abstract values (`run_setup.abstract_setup`: shapes from
`jax.eval_shape` of the init, shardings from the logical axes, the optimizer state by
`eval_shape`; nothing is read or allocated), lowers the trainer's own jitted step on
`jax.ShapeDtypeStruct`s and compiles it for the slice's devices (`topologies.py`: the TPU
compiler through libtpu, or XLA:CPU for `cpu:N`). The evaluation (teacher-forced loss) and
decoding functions of `evaluation.ModelRunner` can be compiled the same way.

Two accounts of the per-device arguments are printed: one summed from the shardings (frozen
parameters, trainable parameters, optimizer state, the rest of the state, the batch), and the
compiler's (`compiled.memory_analysis()`), which also reports outputs, temporaries and generated
code. On XLA:CPU the two argument totals agree exactly; the TPU compiler pads some arrays to
its tile layout. "Total" is arguments + outputs - aliased (the donated state) + temporaries +
generated code, the peak the compiler planned for; it fits when it is at most the device's HBM.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax
import numpy as np

from prompt_tuning.engine import topologies as topologies_lib

_LOG = logging.getLogger("prompt_tuning")
STEPS = ("train", "eval", "decode")
GIB = 1 << 30


@dataclasses.dataclass
class StepMemory:
  """What the compiler reports for one compiled function, per device."""

  name: str
  arguments: int
  outputs: int
  aliased: int
  temporaries: int
  generated_code: int
  flops: Optional[float]
  compile_seconds: float  # the compiler's time (XLA passes, code generation)
  lower_seconds: float = 0.0  # tracing the Python step and lowering it to StableHLO
  out_of_memory: Optional[str] = None  # the compiler's sentence when it could not fit the step

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code


@dataclasses.dataclass
class Plan:
  """A run's plan on a topology."""

  topology: topologies_lib.Topology
  mesh_shape: Dict[str, int]
  arguments: Dict[str, int]  # per-device bytes by part, summed from the shardings
  steps: List[StepMemory]
  hbm_bytes: Optional[int]

  def fits(self, step: StepMemory) -> Optional[bool]:
    if step.out_of_memory is not None:
      return False
    return None if self.hbm_bytes is None else step.total <= self.hbm_bytes

  def as_dict(self) -> Dict[str, Any]:
    """The plan as JSON-ready numbers (bytes per device)."""
    return {"topology": self.topology.name, "platform": self.topology.platform,
            "num_devices": self.topology.num_devices, "mesh": self.mesh_shape,
            "hbm_bytes": self.hbm_bytes, "arguments": dict(self.arguments),
            "steps": [{**dataclasses.asdict(step), "total": step.total,
                       "fits": self.fits(step)} for step in self.steps]}

  def table(self) -> str:
    """The plan as Markdown tables (GiB per device, or MiB when everything is under 1 GiB)."""
    sizes = list(self.arguments.values()) + [s.total for s in self.steps]
    unit, scale = ("GiB", GIB) if max(sizes, default=0) >= GIB else ("MiB", 1 << 20)
    size = lambda b: f"{b / scale:.3f}"  # noqa: E731
    mesh = " x ".join(f"{k} {v}" for k, v in self.mesh_shape.items())
    hbm = "n/a" if self.hbm_bytes is None else f"{self.hbm_bytes / GIB:g} GiB"
    lines = [f"Plan for {self.topology.name} ({self.topology.num_devices} devices, mesh {mesh}, "
             f"HBM per device {hbm}; compiler: XLA:{self.topology.platform.upper()})", "",
             f"| arguments per device (from the shardings) | {unit} |", "|---|---|"]
    lines += [f"| {name} | {size(b)} |" for name, b in self.arguments.items()]
    lines += [f"| sum | {size(sum(self.arguments.values()))} |"]
    if self.steps:
      lines += ["", f"| step ({unit} per device) | arguments | outputs | aliased | temporaries | "
                "code | total | fits | GFLOP per device | lower + compile s |",
                "|---|---|---|---|---|---|---|---|---|---|"]
    for step in self.steps:
      if step.out_of_memory is not None:
        lines.append(f"| {step.name} | the compiler could not fit it: {step.out_of_memory} "
                     f"| | | | | | NO | | {step.lower_seconds:.0f} + "
                     f"{step.compile_seconds:.0f} |")
        continue
      fits = {None: "n/a", True: "yes", False: "NO"}[self.fits(step)]
      flops = "n/a" if step.flops is None else f"{step.flops / 1e9:.1f}"
      lines.append(f"| {step.name} | {size(step.arguments)} | {size(step.outputs)} | "
                   f"{size(step.aliased)} | {size(step.temporaries)} | "
                   f"{size(step.generated_code)} | {size(step.total)} | {fits} | {flops} | "
                   f"{step.lower_seconds:.0f} + {step.compile_seconds:.0f} |")
    return "\n".join(lines)


def device_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of `jax.ShapeDtypeStruct`s with shardings (the largest
  shard, which is every shard when the dimensions divide evenly, as the partitioner checks)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def abstract_batch(model: Any, task_feature_lengths: Mapping[str, int], batch_size: int,
                   mesh: jax.sharding.Mesh) -> Dict[str, jax.ShapeDtypeStruct]:
  """The global batch the data pipeline would feed: the model's feature converter's features
  (and the hook inputs it carries), split over the data axes."""
  from prompt_tuning.engine import partitioning  # pylint: disable=g-import-not-at-top
  converter = model.feature_converter()
  lengths = converter.get_model_feature_lengths(dict(task_feature_lengths))
  dtypes = {spec.name: np.dtype(spec.dtype) for spec in getattr(
      model, "hook_input_specs", lambda: ())()}
  dtypes.update({name: np.dtype(feature.dtype.as_numpy_dtype)
                 for name, feature in converter.MODEL_FEATURES.items()})
  sharding = partitioning.batch_sharding(mesh=mesh)
  return {name: jax.ShapeDtypeStruct((batch_size, length), dtypes.get(name, np.int32),
                                     sharding=sharding) for name, length in lengths.items()}


def _memory(name: str, compiled: Any, seconds: float, lower_seconds: float) -> StepMemory:
  stats = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = None if not cost or "flops" not in cost else float(cost["flops"])
  return StepMemory(name=name, arguments=int(stats.argument_size_in_bytes),
                    outputs=int(stats.output_size_in_bytes),
                    aliased=int(stats.alias_size_in_bytes),
                    temporaries=int(stats.temp_size_in_bytes),
                    generated_code=int(stats.generated_code_size_in_bytes),
                    flops=flops, compile_seconds=seconds, lower_seconds=lower_seconds)


def _compile(name: str, jitted: Any, args: Sequence[Any], mesh, rules) -> StepMemory:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    lowered = jitted.lower(*args)
  lowered_at = time.perf_counter()
  _LOG.info("Lowered the %s step in %.1f s; compiling.", name, lowered_at - start)
  try:
    compiled = lowered.compile()
  except Exception as error:  # pylint: disable=broad-except  (jax.errors.JaxRuntimeError)
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if "RESOURCE_EXHAUSTED" not in message:
      raise
    _LOG.info("The %s step does not fit: %s", name, message)
    return StepMemory(name=name, arguments=0, outputs=0, aliased=0, temporaries=0,
                      generated_code=0, flops=None,
                      compile_seconds=time.perf_counter() - lowered_at,
                      lower_seconds=lowered_at - start,
                      out_of_memory=message.split("RESOURCE_EXHAUSTED:", 1)[-1].strip())
  memory = _memory(name, compiled, time.perf_counter() - lowered_at, lowered_at - start)
  _LOG.info("Compiled the %s step in %.1f s.", name, memory.compile_seconds)
  return memory


def plan_run(*, model: Any, train_dataset_cfg: Any, optimizer: Any,
             topology: topologies_lib.Topology, steps: Sequence[str] = ("train",),
             mesh_config: Any = None, trainable_patterns: Optional[Sequence[str]] = None,
             param_groups: Optional[Sequence[Any]] = None, restore_cfg: Any = None,
             num_microbatches: int = 1, max_grad_norm: Optional[float] = None,
             random_seed: int = 0, decoder_params: Optional[Mapping[str, Any]] = None,
             learning_rate_fn: Any = None, hbm_bytes: Optional[int] = None,
             **unused: Any) -> Plan:
  """Compiles the run's steps for `topology` on abstract values and reports their memory.

  Arguments as `jobs.train.train` (the rest of its arguments, such as `model_dir`, are accepted
  and ignored: nothing is written). `steps`: any of 'train', 'eval' (teacher-forced loss) and
  'decode' (the infer-eval prediction); `hbm_bytes` overrides the device's memory.
  """
  del unused
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import evaluation, partitioning, run_setup, trainer
  from prompt_tuning.jobs import train as train_job
  # pylint: enable=g-import-not-at-top
  unknown = [s for s in steps if s not in STEPS]
  if unknown:
    raise ValueError(f"Unknown step {unknown[0]!r} to plan; expected some of {list(STEPS)}.")
  mesh_config = mesh_config or partitioning.MeshConfig()
  mesh = mesh_config.make_mesh(devices=topologies_lib.devices(topology))
  rules = mesh_config.axis_rules()
  batch_size = train_dataset_cfg.batch_size
  train_job._check_batch_fits_mesh(batch_size, mesh)  # pylint: disable=protected-access
  task_lengths = train_dataset_cfg.task_feature_lengths
  lengths = model.model_feature_lengths(task_lengths)
  session = run_setup.abstract_setup(
      model=model, lengths=lengths, mesh=mesh, rules=rules,
      restore=restore_cfg or trainer.RestoreConfig(), optimizer=optimizer, seed=random_seed,
      groups=param_groups, patterns=trainable_patterns)
  batch = abstract_batch(model, task_lengths, batch_size, mesh)
  state = session.state
  arguments = {
      "frozen parameters": device_bytes(session.placed.frozen),
      "trainable parameters": device_bytes(state.params),
      "optimizer state": device_bytes(state.opt_state),
      "step, rng, data position": device_bytes((state.step, state.rng, state.data_position)),
      "batch": device_bytes(batch),
  }
  compiled: List[StepMemory] = []
  if "train" in steps:
    step_fn = trainer.compile_train_step(
        model=model, optimizer=session.optimizer, session=session,
        num_microbatches=num_microbatches, max_grad_norm=max_grad_norm,
        learning_rate_fn=learning_rate_fn)
    compiled.append(_compile("train", step_fn, (state, session.placed.frozen, batch), mesh,
                             rules))
  if "eval" in steps or "decode" in steps:
    runner = evaluation.ModelRunner(
        model=model, mesh=mesh, rules=rules,
        trainable_shardings=session.placed.trainable_shardings,
        frozen_shardings=session.placed.frozen_shardings,
        max_decode_length=evaluation.max_decode_length_for(model, task_lengths),
        decoder_params=decoder_params)
    params = (session.placed.trainable, session.placed.frozen)
    if "eval" in steps:
      # pylint: disable-next=protected-access
      compiled.append(_compile("eval", runner._loss, (*params, batch), mesh, rules))
    if "decode" in steps:
      rng = jax.ShapeDtypeStruct(state.rng.shape, state.rng.dtype)
      # pylint: disable-next=protected-access
      compiled.append(_compile("decode", runner._predict, (*params, batch, rng), mesh, rules))
  return Plan(topology=topology, mesh_shape=dict(mesh.shape), arguments=arguments,
              steps=compiled, hbm_bytes=hbm_bytes if hbm_bytes is not None
              else topology.hbm_bytes)
