"""Tests for prompt_tuning.engine.partitioning.

Multi-device checks need 8 CPU devices, which XLA only creates if
XLA_FLAGS=--xla_force_host_platform_device_count=8 is set before JAX starts. This pytest process
may already have started JAX with one device, so those checks run in a fresh `python -c`
subprocess (one per module, shared by the tests through a fixture) that prints its measurements
as JSON; the tests assert on the numbers. The multi-host test starts two such processes that
connect through `initialize_distributed` on the loopback interface.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import types

import flax.linen as nn
import gin
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prompt_tuning import axes
from prompt_tuning.engine import partitioning

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run_python(script: str, *, device_count: int, timeout: int = 240, args=()) -> subprocess.Popen:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={device_count}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  return subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(script), *args],
      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
  )


def _json_result(process: subprocess.Popen, timeout: int = 240) -> dict:
  out, err = process.communicate(timeout=timeout)
  assert process.returncode == 0, f"subprocess failed:\n{err[-4000:]}"
  return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# Rules (no devices needed).


def test_every_logical_axis_name_has_a_rule():
  names = {v for k, v in vars(axes).items() if k.isupper() and isinstance(v, str)}
  ruled = {name for name, _ in partitioning.logical_axis_rules()}
  assert names - ruled == set()


@pytest.mark.parametrize(
    "logical, expected",
    [
        ((axes.EMBED, axes.MLP), P(None, "model")),
        ((axes.MLP, axes.EMBED), P("model", None)),
        ((axes.VOCAB, axes.EMBED), P("model", None)),
        ((axes.EMBED, axes.JOINED_KV), P(None, "model")),
        ((axes.HEADS, axes.RELPOS_BUCKETS), P("model", None)),
        ((axes.PROMPT_LENGTH, axes.PROMPT_EMBED), P(None, None)),
        ((axes.PROMPT_TABLE, axes.PROMPT_LENGTH, axes.PROMPT_EMBED), P(None, None, None)),
        ((axes.BATCH, axes.LENGTH, axes.EMBED), P("data", None, None)),
    ],
)
def test_1d_rules_shard_model_dims_and_replicate_prompts(logical, expected):
  rules = partitioning.logical_axis_rules()
  assert nn.logical_to_mesh_axes(logical, rules) == expected


def test_2d_rules_shard_embed_of_params_but_not_of_activations():
  rules = partitioning.logical_axis_rules(shard_params_over_data=True)
  assert nn.logical_to_mesh_axes((axes.EMBED, axes.MLP), rules) == P("data", "model")
  assert nn.logical_to_mesh_axes((axes.VOCAB, axes.EMBED), rules) == P("model", "data")
  assert nn.logical_to_mesh_axes((axes.BATCH, axes.LENGTH, axes.EMBED), rules) == P(
      "data", None, None
  )
  assert nn.logical_to_mesh_axes((axes.PROMPT_LENGTH, axes.PROMPT_EMBED), rules) == P(None, None)


def test_replica_axis_joins_data_axes_for_the_batch():
  config = partitioning.MeshConfig(data=2, model=2, replica=2)
  assert config.axis_names == ("replica", "data", "model")
  assert config.mesh_shape(num_devices=8) == (2, 2, 2)
  rules = config.axis_rules()
  assert nn.logical_to_mesh_axes((axes.BATCH, axes.EMBED), rules) == P(("replica", "data"), None)


# ------------------------------------------------------------------------------------------------
# Mesh shapes.


@pytest.mark.parametrize(
    "config, devices, shape",
    [
        (partitioning.MeshConfig(), 8, (8, 1)),
        (partitioning.MeshConfig(model=2), 8, (4, 2)),
        (partitioning.MeshConfig(data=4, model=2), 8, (4, 2)),
        (partitioning.MeshConfig(model=8), 256, (32, 8)),
        (partitioning.MeshConfig(data=-1, model=4, replica=2), 32, (2, 4, 4)),
    ],
)
def test_mesh_shape_resolves_minus_one(config, devices, shape):
  assert config.mesh_shape(num_devices=devices) == shape


def test_mesh_shape_errors_name_the_problem():
  with pytest.raises(ValueError, match="cannot be split into model=3"):
    partitioning.MeshConfig(model=3).mesh_shape(num_devices=8)
  with pytest.raises(ValueError, match="exactly the 8 available devices"):
    partitioning.MeshConfig(data=2, model=2).mesh_shape(num_devices=8)
  with pytest.raises(ValueError, match="expects 16 devices but 8 are present"):
    partitioning.MeshConfig(expected_device_count=16).mesh_shape(num_devices=8)


def test_single_device_mesh_is_auto_typed():
  import jax  # pylint: disable=g-import-not-at-top

  mesh = partitioning.MeshConfig().make_mesh(devices=jax.devices()[:1])
  assert dict(mesh.shape) == {"data": 1, "model": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


# ------------------------------------------------------------------------------------------------
# Which data shard a host reads (fake devices carrying a process_index).


def _fake_mesh(shape, names, devices_per_process):
  count = int(np.prod(shape))
  devices = np.array(
      [types.SimpleNamespace(id=i, process_index=i // devices_per_process) for i in range(count)],
      dtype=object,
  ).reshape(shape)
  return types.SimpleNamespace(devices=devices, axis_names=names)


def test_each_host_reads_its_own_shard_under_pure_data_parallelism():
  mesh = _fake_mesh((8, 1), ("data", "model"), devices_per_process=2)  # 4 hosts
  infos = [partitioning.host_data_shard(mesh=mesh, process_index=p) for p in range(4)]
  assert [(i.index, i.num_shards) for i in infos] == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_hosts_sharing_batch_rows_read_the_same_shard():
  # The model axis (4) spans two hosts of 2 devices, so hosts 0,1 hold data row 0 and 2,3 row 1.
  mesh = _fake_mesh((2, 4), ("data", "model"), devices_per_process=2)
  infos = [partitioning.host_data_shard(mesh=mesh, process_index=p) for p in range(4)]
  assert [(i.index, i.num_shards) for i in infos] == [(0, 2), (0, 2), (1, 2), (1, 2)]


def test_replica_and_data_axes_both_split_the_input():
  mesh = _fake_mesh((2, 2, 2), ("replica", "data", "model"), devices_per_process=2)
  infos = [partitioning.host_data_shard(mesh=mesh, process_index=p) for p in range(4)]
  assert [i.index for i in infos] == [0, 1, 2, 3]
  assert {i.num_shards for i in infos} == {4}


def test_per_host_batch_size():
  shard = partitioning.DataShard(index=1, num_shards=4)
  assert shard.per_host_batch_size(32) == 8
  with pytest.raises(ValueError, match="Global batch size 30 does not divide over 4 data shards"):
    shard.per_host_batch_size(30)


def test_overlapping_host_rows_are_rejected():
  # 3 devices per host over rows of 2: host 0 holds rows {0, 1}, host 1 rows {1, 2}.
  mesh = _fake_mesh((3, 2), ("data", "model"), devices_per_process=3)
  with pytest.raises(ValueError, match="overlapping"):
    partitioning.host_data_shard(mesh=mesh, process_index=0)


# ------------------------------------------------------------------------------------------------
# Gin files.

GIN_EXPECTATIONS = {
    "v3_8.gin": (8, (8, 1)),
    "v3_32.gin": (32, (4, 8)),
    "v4_32.gin": (16, (16, 1)),
    "v5e_16.gin": (16, (16, 1)),
    "model_parallel_xl.gin": (16, (4, 4)),
    "model_parallel_xxl.gin": (64, (8, 8)),
    "cpu_8.gin": (8, (4, 2)),
    "fsdp_tp_8b_v5e_16.gin": (16, (4, 4)),
    "fsdp_tp_8b_v4_32.gin": (16, (4, 4)),
    "fsdp_tp_70b_v5e_64.gin": (64, (8, 8)),
    "fsdp_tp_70b_v4_128.gin": (64, (8, 8)),
    "xxl_v3_8.gin": (8, (1, 8)),
}


def _register_mesh_config():
  try:
    gin.external_configurable(partitioning.MeshConfig, module="partitioning")
  except ValueError:  # already registered by the entry points or an earlier test
    pass


@pytest.mark.parametrize("name", sorted(GIN_EXPECTATIONS))
def test_partitioning_gin_file_binds_a_valid_mesh(name):
  _register_mesh_config()
  num_devices, shape = GIN_EXPECTATIONS[name]
  gin.clear_config()
  try:
    gin.parse_config_file(str(REPO / "gin" / "partitioning" / name))
    config = gin.get_configurable("partitioning.MeshConfig")()
    assert config.mesh_shape(num_devices=num_devices) == shape
  finally:
    gin.clear_config()


def test_every_partitioning_gin_file_is_tested():
  files = {p.name for p in (REPO / "gin" / "partitioning").glob("*.gin")}
  assert files == set(GIN_EXPECTATIONS)


# ------------------------------------------------------------------------------------------------
# 8 CPU devices: shardings, sharded init, and a sharded train step vs. one device.

EIGHT_DEVICE_SCRIPT = """
import json
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from prompt_tuning import axes
from prompt_tuning.engine import partitioning, train_state

def param(module, name, names, shape):
  init = nn.with_logical_partitioning(nn.initializers.normal(0.5), names)
  return module.param(name, init, shape)

class Hook(nn.Module):
  @nn.compact
  def __call__(self, x):  # [B, H] -> [B, H]
    return x + param(self, "prompt", (axes.PROMPT_LENGTH, axes.PROMPT_EMBED), (4, 8)).mean(0)

class Toy(nn.Module):
  mlp: int = 16
  @nn.compact
  def __call__(self, x):
    x = Hook(name="input_hook")(x)
    h = jax.nn.relu(x @ param(self, "wi", (axes.EMBED, axes.MLP), (8, self.mlp)))
    return h @ param(self, "wo", (axes.MLP, axes.EMBED), (self.mlp, 8))

model = Toy()
rng = jax.random.PRNGKey(0)
x = jnp.ones((8, 8))
init_fn = lambda r: model.init(r, x)
out = {}

config = partitioning.MeshConfig(data=4, model=2)
mesh = config.make_mesh()
rules = config.axis_rules()
out["mesh"] = dict(mesh.shape)
variables, shardings = partitioning.sharded_init(init_fn=init_fn, rng=rng, mesh=mesh, rules=rules)
params = variables["params"]
spec = lambda s: [list(a) if isinstance(a, tuple) else a for a in s.spec]
named = {"wi": params["wi"], "wo": params["wo"], "prompt": params["input_hook"]["prompt"]}
out["specs"] = {k: spec(v.sharding) for k, v in named.items()}
out["shard_shapes"] = {k: list(v.addressable_shards[0].data.shape) for k, v in named.items()}
plain = nn.meta.unbox(model.init(rng, x))["params"]
out["init_max_diff"] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                           zip(jax.tree.leaves(plain), jax.tree.leaves(params)))

two_d = partitioning.MeshConfig(data=4, model=2, shard_params_over_data=True)
abstract = jax.eval_shape(init_fn, rng)
shard_2d = partitioning.param_shardings(abstract_params=abstract, mesh=mesh,
                                       rules=two_d.axis_rules())
out["specs_2d_wi"] = spec(shard_2d["params"]["wi"])

batch = partitioning.host_local_to_global(batch={"x": np.arange(64.0).reshape(8, 8)}, mesh=mesh)
out["batch_shard_shape"] = list(batch["x"].addressable_shards[0].data.shape)
out["batch_spec"] = spec(batch["x"].sharding)

try:
  odd = Toy(mlp=5)
  partitioning.param_shardings(abstract_params=jax.eval_shape(lambda r: odd.init(r, x), rng),
                               mesh=mesh, rules=rules)
  out["odd_error"] = None
except ValueError as error:
  out["odd_error"] = str(error)
try:
  partitioning.MeshConfig(expected_device_count=16).make_mesh()
  out["count_error"] = None
except ValueError as error:
  out["count_error"] = str(error)

# Optimizer slots of a fully trained model follow their parameter's sharding.
full_sh = train_state.state_shardings(optimizer=optax.adam(1e-3), trainable_params=params,
                                      trainable_shardings=shardings["params"], mesh=mesh)
out["adam_mu_wi_spec"] = spec(full_sh.opt_state[0].mu["wi"])
out["adam_count_spec"] = spec(full_sh.opt_state[0].count)

# A prompt-tuning train step on the mesh vs. on one device.
def loss_fn(p, b, dropout_rng):
  y = model.apply({"params": p}, b["x"])
  loss = jnp.mean((y - b["y"]) ** 2)
  return loss, {"mean_y": jnp.mean(y)}

optimizer = optax.adam(0.1)
step_fn = train_state.make_train_step(loss_fn=loss_fn, optimizer=optimizer, num_microbatches=2,
                                      max_grad_norm=1.0)
data = {"x": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8),
        "y": np.cos(np.arange(64, dtype=np.float32)).reshape(8, 8)}

def run(params, put_batch, jitted):
  trainable, frozen = train_state.split_params(params=params)
  state = train_state.create_train_state(trainable_params=trainable, optimizer=optimizer, rng=rng)
  losses = []
  for _ in range(3):
    state, metrics = jitted(state, frozen, put_batch(data))
    losses.append(float(metrics["loss"]))
  return state, losses

trainable_sh, frozen_sh = train_state.split_params(params=shardings["params"])
trainable_abs, _ = train_state.split_params(params=params)
state_sh = train_state.state_shardings(optimizer=optimizer, trainable_params=trainable_abs,
                                       trainable_shardings=trainable_sh, mesh=mesh)
batch_sh = partitioning.batch_sharding(mesh=mesh)
with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
  sharded_step = jax.jit(step_fn, in_shardings=(state_sh, frozen_sh, batch_sh),
                         out_shardings=(state_sh, None))
  to_global = lambda b: partitioning.host_local_to_global(batch=b, mesh=mesh)
  mesh_state, mesh_losses = run(params, to_global, sharded_step)
device0 = jax.devices()[0]
single_params = jax.device_put(plain, device0)
one_state, one_losses = run(single_params, lambda b: jax.device_put(b, device0), jax.jit(step_fn))
out["mesh_losses"] = mesh_losses
out["one_losses"] = one_losses
mesh_prompt = np.asarray(mesh_state.params["input_hook"]["prompt"])
one_prompt = np.asarray(one_state.params["input_hook"]["prompt"])
out["prompt_max_diff"] = float(np.abs(mesh_prompt - one_prompt).max())
out["prompt_moved"] = float(np.abs(mesh_prompt - np.asarray(plain["input_hook"]["prompt"])).max())
out["state_prompt_spec"] = spec(mesh_state.params["input_hook"]["prompt"].sharding)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def eight_devices():
  return _json_result(_run_python(EIGHT_DEVICE_SCRIPT, device_count=8))


@pytest.mark.slow
def test_4x2_mesh_shards_model_dims_and_replicates_the_prompt(eight_devices):
  assert eight_devices["mesh"] == {"data": 4, "model": 2}
  assert eight_devices["specs"] == {
      "wi": [None, "model"],
      "wo": ["model", None],
      "prompt": [None, None],
  }
  assert eight_devices["shard_shapes"] == {"wi": [8, 8], "wo": [8, 8], "prompt": [4, 8]}


@pytest.mark.slow
def test_sharded_init_gives_the_same_values_as_plain_init(eight_devices):
  assert eight_devices["init_max_diff"] == 0.0


@pytest.mark.slow
def test_2d_rules_on_the_mesh_shard_embed_over_data(eight_devices):
  assert eight_devices["specs_2d_wi"] == ["data", "model"]


@pytest.mark.slow
def test_batch_is_split_over_the_data_axis(eight_devices):
  assert eight_devices["batch_spec"] == ["data"]
  assert eight_devices["batch_shard_shape"] == [2, 8]


@pytest.mark.slow
def test_indivisible_parameter_is_reported_by_name(eight_devices):
  message = eight_devices["odd_error"]
  assert message is not None and "'params/wi'" in message and "size 5" in message


@pytest.mark.slow
def test_wrong_device_count_is_reported(eight_devices):
  assert "expects 16 devices but 8 are present" in eight_devices["count_error"]


@pytest.mark.slow
def test_optimizer_slots_follow_parameter_shardings(eight_devices):
  assert eight_devices["adam_mu_wi_spec"] == [None, "model"]
  assert eight_devices["adam_count_spec"] == []


@pytest.mark.slow
def test_train_step_on_4x2_mesh_matches_one_device(eight_devices):
  np.testing.assert_allclose(eight_devices["mesh_losses"], eight_devices["one_losses"], rtol=1e-5)
  assert eight_devices["prompt_moved"] > 0.1  # training did something...
  assert eight_devices["prompt_max_diff"] < 1e-5  # ...and the same thing on both layouts
  assert eight_devices["state_prompt_spec"] == [None, None]


# ------------------------------------------------------------------------------------------------
# Two processes on loopback.

TWO_PROCESS_SCRIPT = """
import json, sys
import numpy as np
from prompt_tuning.engine import partitioning
process_id, port = int(sys.argv[1]), sys.argv[2]
partitioning.initialize_distributed(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                    process_id=process_id)
partitioning.initialize_distributed(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                    process_id=process_id)  # a second call is a no-op
import jax
import jax.numpy as jnp
out = {"process_count": jax.process_count(), "devices": len(jax.devices())}
mesh = partitioning.MeshConfig().make_mesh()
info = partitioning.host_data_shard(mesh=mesh)
out["data_parallel_shard"] = [info.index, info.num_shards]
local = np.arange(6, dtype=np.float32).reshape(2, 3) + 100 * info.index
batch = partitioning.host_local_to_global(batch=local, mesh=mesh)
out["global_shape"] = list(batch.shape)
out["global_sum"] = float(jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec()))(batch))
model_mesh = partitioning.MeshConfig(data=1, model=4).make_mesh()
info = partitioning.host_data_shard(mesh=model_mesh)
out["model_parallel_shard"] = [info.index, info.num_shards]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_two_processes_split_the_data_and_form_one_global_batch():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  processes = [
      _run_python(TWO_PROCESS_SCRIPT, device_count=2, args=(str(i), str(port))) for i in range(2)
  ]
  results = [_json_result(p) for p in processes]
  for process_id, result in enumerate(results):
    assert result["process_count"] == 2 and result["devices"] == 4
    assert result["data_parallel_shard"] == [process_id, 2]
    assert result["global_shape"] == [4, 3]
    # Host 0 contributes 0..5, host 1 contributes 100..105.
    assert result["global_sum"] == 15.0 + 615.0
    # With the model axis over all 4 devices both hosts hold the same rows: one shard.
    assert result["model_parallel_shard"] == [0, 1]


@pytest.mark.slow
def test_initialize_distributed_without_a_cluster_is_a_no_op():
  script = """
  import json
  from prompt_tuning.engine import partitioning
  partitioning.initialize_distributed()
  import jax
  print(json.dumps({"process_count": jax.process_count()}))
  """
  assert _json_result(_run_python(script, device_count=1)) == {"process_count": 1}
