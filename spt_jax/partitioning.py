"""Device mesh, logical axis rules and shardings: the only module that names mesh axes.

Every parameter and large activation in the library is annotated with *logical* axis names
(T5X's `vocab`, `embed`, `mlp`, `heads`, `kv`, `joined_kv`, ... plus SPT's `prompt`,
`memory`, `memory_length`). This module maps those names onto a 2-D device mesh with axes
`('data', 'model')` and turns them into `NamedSharding`s for parameters, optimizer state and
batches, so the trainer can `jax.jit` with explicit `in_shardings` / `out_shardings`.

Typical use::

  mesh = partitioning.create_mesh(num_partitions=2)
  rules = partitioning.standard_logical_axis_rules()
  with partitioning.activate(mesh, rules):       # activations' logical constraints resolve
    param_shardings = partitioning.logical_to_shardings(logical_specs, mesh, rules)
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'
MODEL_AXIS = 'model'
MESH_AXES = (DATA_AXIS, MODEL_AXIS)

LogicalRules = Sequence[tuple[str, str | None]]

# SPT's own axes. `memory` is split over `model` so a large memory bank is sharded and
# retrieval runs as a two-stage top-k (see retrieval.retrieve_top_k). `query_mlp` is the
# small bottleneck of the optional ATTEMPT query projection (replicated).
SPT_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ('prompt', None),
    ('memory', MODEL_AXIS),
    ('memory_length', None),
    ('query_mlp', None),
)

# Logical names that are always replicated (as in T5X).
_REPLICATED_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ('relpos_buckets', None),
    ('abspos_buckets', None),
    ('length', None),
    ('layers', None),
    ('stack', None),
    ('mlp_activations', None),
)


def standard_logical_axis_rules(
    activation_partitioning_dims: int = 1,
    parameter_partitioning_dims: int = 1,
    additional_rules: LogicalRules | None = None,
) -> tuple[tuple[str, str | None], ...]:
  """T5X's standard logical→mesh axis rules plus SPT's prompt / memory axes.

  Args:
    activation_partitioning_dims: 1 splits activations over `data` only (batch); 2 also
      splits the `embed` dimension of activations over `model`.
    parameter_partitioning_dims: 1 splits parameters over `model` only (1-D model
      parallelism); 2 additionally splits the `embed` dimension of parameters over `data`
      (2-D, ZeRO-3-like parameter sharding).
    additional_rules: rules placed *before* the standard ones, so they take precedence.

  Returns:
    A tuple of `(logical_name, mesh_axis_or_None)` pairs for `nn.logical_axis_rules`.
  """
  dims = (activation_partitioning_dims, parameter_partitioning_dims)
  if dims == (1, 1):
    rules = [('batch', DATA_AXIS), ('vocab', MODEL_AXIS), ('embed', None),
             ('mlp', MODEL_AXIS), ('heads', MODEL_AXIS), ('kv', None),
             ('joined_kv', MODEL_AXIS)]
  elif dims == (2, 1):
    rules = [('batch', DATA_AXIS), ('vocab', MODEL_AXIS), ('mlp', MODEL_AXIS),
             ('heads', MODEL_AXIS), ('kv', None), ('joined_kv', MODEL_AXIS),
             ('embed', MODEL_AXIS)]
  elif dims == (1, 2):
    rules = [('batch', DATA_AXIS), ('vocab', MODEL_AXIS), ('embed', DATA_AXIS),
             ('mlp', MODEL_AXIS), ('heads', MODEL_AXIS), ('kv', None),
             ('joined_kv', MODEL_AXIS)]
  elif dims == (2, 2):
    rules = [('batch', DATA_AXIS), ('vocab', MODEL_AXIS), ('mlp', MODEL_AXIS),
             ('heads', MODEL_AXIS), ('kv', None), ('joined_kv', MODEL_AXIS),
             ('embed', MODEL_AXIS), ('embed', DATA_AXIS)]
  else:
    raise ValueError(
        f'activation_partitioning_dims={activation_partitioning_dims} and '
        f'parameter_partitioning_dims={parameter_partitioning_dims} are not supported; '
        'each must be 1 or 2.')
  return tuple(additional_rules or ()) + tuple(rules) + SPT_AXIS_RULES + _REPLICATED_AXIS_RULES


LOGICAL_AXIS_RULES = standard_logical_axis_rules()


def create_mesh(
    num_partitions: int = 1,
    mesh_shape: Sequence[int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds the `('data', 'model')` mesh.

  Args:
    num_partitions: size of the `model` axis (model parallelism); the `data` axis takes the
      rest of the devices. Ignored when `mesh_shape` is given.
    mesh_shape: explicit `(data, model)` sizes; their product must equal the device count.
    devices: devices to use; default all of `jax.devices()` (global, across processes).

  Returns:
    A `jax.sharding.Mesh` with axis names `('data', 'model')`.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if mesh_shape is None:
    if num_partitions < 1 or n % num_partitions:
      raise ValueError(
          f'num_partitions={num_partitions} does not divide the {n} available devices; '
          f'choose a divisor of {n}: --gin.partitioning.Partitioner.num_partitions=N.')
    mesh_shape = (n // num_partitions, num_partitions)
  mesh_shape = tuple(int(s) for s in mesh_shape)
  if len(mesh_shape) != 2 or math.prod(mesh_shape) != n:
    raise ValueError(
        f'mesh_shape={mesh_shape} must be (data, model) with data*model == {n} devices.')
  try:
    # Topology-aware ordering on TPU / GPU; keeps each process's devices contiguous.
    device_array = mesh_utils.create_device_mesh(
        mesh_shape, devices=devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    device_array = np.asarray(
        sorted(devices, key=lambda d: (d.process_index, d.id))).reshape(mesh_shape)
  return Mesh(device_array, MESH_AXES)


@dataclasses.dataclass(frozen=True)
class Partitioner:
  """The mesh and the logical axis rules of a run; one for train, evaluate and infer.

  As T5X's partitioner: gin builds it once (`partitioning.Partitioner.num_partitions = 2`)
  and every entry point takes it, so the model-parallel layout has one name everywhere.

  Attributes:
    num_partitions: size of the `model` axis (`create_mesh`).
    mesh_shape: explicit `(data, model)` sizes; overrides `num_partitions`.
    activation_partitioning_dims, parameter_partitioning_dims: the rule variant
      (`standard_logical_axis_rules`).
    mesh: an existing mesh, used as it is (tests, notebooks); overrides both sizes.
  """
  num_partitions: int = 1
  mesh_shape: Sequence[int] | None = None
  activation_partitioning_dims: int = 1
  parameter_partitioning_dims: int = 1
  mesh: Mesh | None = None

  def create_mesh(self) -> Mesh:
    """The `('data', 'model')` mesh over all devices (or `mesh` when given)."""
    if self.mesh is not None:
      return self.mesh
    return create_mesh(num_partitions=self.num_partitions, mesh_shape=self.mesh_shape)

  @property
  def rules(self) -> tuple[tuple[str, str | None], ...]:
    return standard_logical_axis_rules(self.activation_partitioning_dims,
                                       self.parameter_partitioning_dims)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: LogicalRules = LOGICAL_AXIS_RULES) -> Iterator[None]:
  """Context in which logical constraints (`nn.with_logical_constraint`) resolve on `mesh`.

  Trace (and call) jitted functions inside it: flax reads the rules from
  `nn.logical_axis_rules`, jax the mesh from `jax.set_mesh`.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def process_rows(features: dict[str, np.ndarray], batch_size: int,
                 mesh: Mesh) -> dict[str, np.ndarray]:
  """This process's rows of a global batch `{k: [batch_size, ...]}` that every process holds
  whole (evaluation and inference iterate the whole set on every process)."""
  local = host_local_batch_size(batch_size, mesh)
  pid = jax.process_index() if jax.process_count() > 1 else 0
  return {k: v[pid * local:(pid + 1) * local] for k, v in features.items()}


def data_parallel_size(mesh: Mesh) -> int:
  return int(mesh.shape[DATA_AXIS])


def model_parallel_size(mesh: Mesh) -> int:
  return int(mesh.shape[MODEL_AXIS])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a `[batch, ...]` input array: batch over `data`, rest replicated."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def logical_specs(boxed_tree: Any) -> Any:
  """Logical `PartitionSpec`s of a tree of `nn.Partitioned` (boxed) values; `P()` elsewhere."""
  return nn.get_partition_spec(boxed_tree)


def logical_to_shardings(logical_spec_tree: Any, mesh: Mesh,
                         rules: LogicalRules = LOGICAL_AXIS_RULES) -> Any:
  """Maps a tree of logical `PartitionSpec`s to `NamedSharding`s on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_spec_tree, mesh, rules)


def _check_divisible(abstract_tree: Any, sharding_tree: Any) -> None:
  """Raises a clear error where a sharded dimension is not divisible by its mesh axes."""
  flat_a = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
  flat_s = jax.tree_util.tree_leaves(
      sharding_tree, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sharding in zip(flat_a, flat_s):
    for dim, axes in zip(leaf.shape, sharding.spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      size = math.prod(sharding.mesh.shape[a] for a in axes)
      if dim % size:
        raise ValueError(
            f'Parameter {jax.tree_util.keystr(path)} with shape {leaf.shape} cannot be split '
            f'over mesh axes {axes} (size {size}): dimension {dim} is not divisible. Change '
            'num_partitions / mesh_shape or the partitioning rules for that logical axis.')


def param_shardings(boxed_abstract_params: Any, mesh: Mesh,
                    rules: LogicalRules = LOGICAL_AXIS_RULES) -> Any:
  """`NamedSharding`s for a tree of boxed (`nn.Partitioned`) abstract parameters.

  The result has the structure of the *unboxed* parameters. Unannotated leaves are
  replicated. Raises `ValueError` naming the parameter if a dimension does not divide.
  """
  specs = logical_specs(boxed_abstract_params)
  shardings = logical_to_shardings(specs, mesh, rules)
  _check_divisible(nn.unbox(boxed_abstract_params), shardings)
  return shardings


def _dict_key_suffix(path: tuple[Any, ...]) -> tuple[str, ...]:
  """Trailing run of dict keys of a pytree path (the parameter path inside a state tree)."""
  names = []
  for entry in reversed(path):
    if isinstance(entry, jax.tree_util.DictKey):
      names.append(str(entry.key))
    else:
      break
  return tuple(reversed(names))


def opt_state_shardings(abstract_opt_state: Any, abstract_params: Any, params_shardings: Any,
                        mesh: Mesh) -> Any:
  """`NamedSharding` tree for an (abstract) optimizer state.

  A state leaf whose trailing dict-key path equals a parameter's path *and* whose shape
  equals that parameter's shape (Adam moments, Adafactor's unfactored `v`) gets the
  parameter's sharding; anything else (scalar counts, Adafactor's factored row / column
  statistics, which are vectors) is replicated.
  """
  by_path = {
      tuple(str(p.key) for p in path): sharding
      for path, sharding in jax.tree_util.tree_flatten_with_path(
          params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]
  }
  shapes = {
      tuple(str(p.key) for p in path): tuple(leaf.shape)
      for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  }
  rep = replicated(mesh)

  def choose(path, leaf):
    key = _dict_key_suffix(path)
    for start in range(len(key)):
      sub = key[start:]
      if sub in by_path and shapes.get(sub) == tuple(leaf.shape):
        return by_path[sub]
    return rep

  return jax.tree_util.tree_map_with_path(choose, abstract_opt_state)


def host_local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Rows of the global batch this process feeds; checks divisibility with a clear error."""
  dp = data_parallel_size(mesh)
  if global_batch_size % dp:
    raise ValueError(
        f'BATCH_SIZE={global_batch_size} is not divisible by the data-parallel size {dp} '
        f'(mesh {dict(mesh.shape)}); choose a multiple of {dp} or change num_partitions.')
  nproc = jax.process_count()
  if global_batch_size % nproc:
    raise ValueError(
        f'BATCH_SIZE={global_batch_size} is not divisible by the process count {nproc}.')
  return global_batch_size // nproc


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh,
                global_batch_size: int | None = None) -> dict[str, jax.Array]:
  """Assembles global `[B, ...]` arrays, batch-sharded over `data`, from host-local rows.

  Each process passes its own `B / process_count` rows (in process order), as produced by
  `seqio.ShardInfo(jax.process_index(), jax.process_count())`.
  """
  sharding = batch_sharding(mesh)
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    global_shape = None
    if global_batch_size is not None:
      global_shape = (global_batch_size,) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out
