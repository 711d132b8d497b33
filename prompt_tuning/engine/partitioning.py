"""Device mesh, logical-axis rules and multi-host data placement.

The models name every parameter axis with the logical names in `prompt_tuning.axes`; this module
is the one place that maps those names onto a device mesh. Keeping the map here (and out of the
model code) lets one model run pure data parallel on a v3-8 and model parallel on a pod by
changing only a gin file.

Typical use by a trainer:

  mesh_config = MeshConfig(data=-1, model=2)
  mesh = mesh_config.make_mesh()
  rules = mesh_config.axis_rules()
  variables, shardings = sharded_init(init_fn=lambda rng: model.init(rng, ...), rng=rng,
                                      mesh=mesh, rules=rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    ...  # jit the step with in/out shardings from `param_shardings` and `batch_sharding`

Mesh axes are `replica` (optional, across slices), `data` and `model`. Meshes use
`AxisType.Auto` so XLA's sharding propagation fills in what the logical constraints leave open.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning import axes

REPLICA = "replica"
DATA = "data"
MODEL = "model"

LogicalRules = tuple[tuple[str, Any], ...]


# ------------------------------------------------------------------------------------------------
# Rules.


def logical_axis_rules(
    *,
    data_axes: Sequence[str] = (DATA,),
    model_axis: str = MODEL,
    shard_params_over_data: bool = False,
) -> LogicalRules:
  """Returns the ordered (logical name, mesh axes) rules for the project's models.

  1-D parameter sharding: the batch goes over the data axes; vocab, mlp, heads and joined_kv
  over the model axis; everything else (embed, kv, lengths, position tables, prompts) is
  replicated. Prompts are replicated because they are tiny and every device needs all of them.

  Args:
    data_axes: mesh axes the batch is split over, e.g. ('replica', 'data') for multi-slice.
    model_axis: mesh axis for tensor (model) parallelism.
    shard_params_over_data: also shard parameters' `embed` dimension over the data axes
      (2-D / FSDP-like). Flax applies rules in order and skips a rule whose mesh axes an array
      already uses, so activations whose batch is on `data` keep `embed` replicated while
      parameters (which have no batch axis) get `embed` sharded over `data`.
  """
  data = tuple(data_axes) if len(data_axes) > 1 else data_axes[0]
  rules = [
      (axes.BATCH, data),
      (axes.VOCAB, model_axis),
      (axes.MLP, model_axis),
      (axes.HEADS, model_axis),
      (axes.JOINED_KV, model_axis),
      (axes.KV, None),
      (axes.LENGTH, None),
      (axes.KV_LENGTH, None),
      (axes.RELPOS_BUCKETS, None),
      (axes.ABS_POS, None),
      (axes.STACK, None),
      (axes.PROMPT_LENGTH, None),
      (axes.PROMPT_EMBED, None),
      (axes.PROMPT_TABLE, None),
  ]
  if shard_params_over_data:
    rules.append((axes.EMBED, data))
  rules.append((axes.EMBED, None))
  return tuple(rules)


# ------------------------------------------------------------------------------------------------
# Mesh.


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Shape of the device mesh and how parameters use it (the gin-bound partitioning knobs).

  Attributes:
    data: size of the data-parallel axis; -1 means "all devices not used by the other axes".
    model: size of the model-parallel axis (1 = pure data parallel).
    replica: number of slices for multi-slice (DCN) data parallelism; 1 omits the axis.
    shard_params_over_data: 2-D / FSDP-like parameter sharding, see `logical_axis_rules`.
    expected_device_count: if set, `make_mesh` fails unless exactly this many devices exist,
      so a run configured for a v3-8 does not silently run on a different topology.
  """

  data: int = -1
  model: int = 1
  replica: int = 1
  shard_params_over_data: bool = False
  expected_device_count: Optional[int] = None

  @property
  def axis_names(self) -> tuple[str, ...]:
    return ((REPLICA,) if self.replica > 1 else ()) + (DATA, MODEL)

  @property
  def data_axes(self) -> tuple[str, ...]:
    """The mesh axes that split the batch."""
    return ((REPLICA,) if self.replica > 1 else ()) + (DATA,)

  def axis_rules(self) -> LogicalRules:
    return logical_axis_rules(
        data_axes=self.data_axes, shard_params_over_data=self.shard_params_over_data
    )

  def mesh_shape(self, *, num_devices: int) -> tuple[int, ...]:
    """Resolves -1 and checks the shape against `num_devices`."""
    if self.expected_device_count is not None and num_devices != self.expected_device_count:
      raise ValueError(
          f"The mesh config expects {self.expected_device_count} devices but "
          f"{num_devices} are present; use the partitioning gin file for this topology."
      )
    for name, size in (("model", self.model), ("replica", self.replica)):
      if size < 1:
        raise ValueError(f"Mesh axis '{name}' must be a positive size, got {size}.")
    others = self.model * self.replica
    data = self.data
    if data == -1:
      if num_devices % others:
        raise ValueError(
            f"{num_devices} devices cannot be split into model={self.model} x "
            f"replica={self.replica} groups."
        )
      data = num_devices // others
    if data < 1 or data * others != num_devices:
      raise ValueError(
          f"Mesh replica={self.replica} x data={self.data} x model={self.model} does not "
          f"use exactly the {num_devices} available devices."
      )
    return ((self.replica,) if self.replica > 1 else ()) + (data, self.model)

  def make_mesh(self, *, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """Builds the mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = self.mesh_shape(num_devices=len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(shape)
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    if self.replica > 1 and num_slices == self.replica:
      # Multi-slice: the replica axis crosses the slow data-centre network, the rest stays
      # inside a slice's fast interconnect.
      from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top

      device_array = mesh_utils.create_hybrid_device_mesh(
          (1,) + shape[1:], (self.replica,) + (1,) * (len(shape) - 1), devices=devices
      )
      return Mesh(device_array, self.axis_names, axis_types=auto)
    return jax.make_mesh(shape, self.axis_names, axis_types=auto, devices=devices)


def data_axes_of(mesh: Mesh) -> tuple[str, ...]:
  """The axes of `mesh` that split the batch (`replica` and `data`, whichever exist)."""
  return tuple(name for name in (REPLICA, DATA) if name in mesh.axis_names)


# ------------------------------------------------------------------------------------------------
# Parameters.


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_shardings(*, abstract_params: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """NamedShardings for a boxed parameter tree (e.g. `jax.eval_shape(module.init, ...)`).

  Leaves created with `nn.with_logical_partitioning` get their logical names mapped through
  `rules`; unboxed leaves are replicated. The result has the *unboxed* tree's structure, ready
  for `jax.jit(..., out_shardings=...)` or as orbax restore targets.

  Raises:
    ValueError: naming the parameter whose dimension does not divide by its mesh axes, which
      XLA would otherwise report much later and without the parameter's name.
  """
  specs = nn.get_partition_spec(abstract_params)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  shapes = nn.meta.unbox(abstract_params)

  def check(path, shape, sharding):
    for dim, (size, mesh_axes) in enumerate(zip(shape.shape, sharding.spec)):
      if mesh_axes is None:
        continue
      names = mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)
      ways = int(np.prod([mesh.shape[n] for n in names]))
      if size % ways:
        raise ValueError(
            f"Parameter '{_path_str(path)}' dimension {dim} has size {size}, which does not "
            f"divide over mesh axes {names} of total size {ways}."
        )

  jax.tree_util.tree_map_with_path(check, shapes, shardings)
  return shardings


def sharded_init(
    *,
    init_fn: Callable[[jax.Array], Any],
    rng: jax.Array,
    mesh: Mesh,
    rules: LogicalRules,
) -> tuple[Any, Any]:
  """Creates variables directly in their shardings, so no host holds the whole model.

  Args:
    init_fn: `rng -> boxed variables`, e.g. `lambda rng: model.init(rng, *dummy_inputs)`.
    rng: PRNG key passed to `init_fn`.
    mesh: the device mesh.
    rules: logical-axis rules (`MeshConfig.axis_rules()`).

  Returns:
    (variables, shardings): unboxed variables as global arrays laid out by `shardings`.
  """
  abstract = jax.eval_shape(init_fn, rng)
  shardings = param_shardings(abstract_params=abstract, mesh=mesh, rules=rules)

  def unboxed_init(key):
    return nn.meta.unbox(init_fn(key))

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    variables = jax.jit(unboxed_init, out_shardings=shardings)(rng)
  return variables, shardings


# ------------------------------------------------------------------------------------------------
# Data.


def batch_sharding(*, mesh: Mesh) -> NamedSharding:
  """Sharding for a batch array: leading (batch) axis over the data axes, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(data_axes_of(mesh)))


def host_local_to_global(*, batch: Any, mesh: Mesh) -> Any:
  """Turns this host's slice of the batch (a tree of numpy arrays) into global jax arrays.

  Each host passes only the examples it read (see `host_data_shard`); the global batch size is
  the local one times the number of distinct data shards.
  """
  sharding = batch_sharding(mesh=mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
  )


@dataclasses.dataclass(frozen=True)
class DataShard:
  """Which part of the input a host reads.

  Has exactly the fields of `seqio.ShardInfo` (index, num_shards), which is all seqio reads, so
  it can be passed as `shard_info=` directly or converted with
  `seqio.ShardInfo(**dataclasses.asdict(shard))`. Our own type keeps partitioning free of the
  seqio import, which pulls in TensorFlow (seconds per process).
  """

  index: int
  num_shards: int

  def per_host_batch_size(self, global_batch_size: int) -> int:
    """How many examples of each global batch this host reads."""
    if global_batch_size % self.num_shards:
      raise ValueError(
          f"Global batch size {global_batch_size} does not divide over {self.num_shards} "
          "data shards."
      )
    return global_batch_size // self.num_shards


def host_data_shard(*, mesh: Mesh, process_index: Optional[int] = None) -> DataShard:
  """Which shard of the input this host should read.

  Hosts whose devices hold the same rows of the batch (because the model axis spans hosts) must
  read the same examples, so the shard count is the number of distinct row groups, not the
  number of hosts. For pure data parallelism this is (process_index, process_count).

  Args:
    mesh: the device mesh (only `devices` and `axis_names` are read).
    process_index: the host to ask about; default: this host.
  """
  process_index = jax.process_index() if process_index is None else process_index
  data_axes = [mesh.axis_names.index(a) for a in data_axes_of(mesh)]
  others = [i for i in range(len(mesh.axis_names)) if i not in data_axes]
  # [data rows (flattened data axes), devices sharing that row].
  devices = np.transpose(mesh.devices, data_axes + others)
  devices = devices.reshape(int(np.prod(devices.shape[: len(data_axes)])), -1)
  rows_of_process: dict[int, set[int]] = {}
  for row in range(devices.shape[0]):
    for device in devices[row]:
      rows_of_process.setdefault(device.process_index, set()).add(row)
  groups = sorted({tuple(sorted(rows)) for rows in rows_of_process.values()})
  flat = [row for group in groups for row in group]
  if len(flat) != len(set(flat)):
    raise ValueError(
        "Hosts hold overlapping but unequal sets of batch rows; choose a mesh whose model "
        "axis either stays within a host or spans whole hosts."
    )
  if process_index not in rows_of_process:
    raise ValueError(f"Process {process_index} owns no device of the mesh.")
  index = groups.index(tuple(sorted(rows_of_process[process_index])))
  return DataShard(index=index, num_shards=len(groups))


# ------------------------------------------------------------------------------------------------
# Multi-host.


def initialize_distributed(
    *,
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
) -> None:
  """Connects the processes of a multi-host run; call before any other JAX call.

  On TPU pods (and other clusters JAX detects) call it with no arguments. With no arguments on a
  single machine it does nothing. With `num_processes=1` it does nothing. Calling it again after
  a successful initialisation does nothing.
  """
  if jax.distributed.is_initialized() or num_processes == 1:
    return
  explicit = coordinator_address is not None or num_processes is not None
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
  except ValueError as error:
    if explicit or "coordinator_address" not in str(error):
      raise
    logging.info("No multi-host cluster detected; running as a single process.")
