"""Data parallelism with pmap semantics: a per-device function with collectives over 'batch'.

The same per-device function runs either through `jax.shard_map` on a 1-D mesh named 'batch'
under `jax.jit` (default), or through `jax.pmap`. Parameters are replicated; batches are split
along their leading axis.
"""

import collections
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nerve_jax.errors import UserError

AXIS = "batch"
PARALLEL_CHOICES = ("shard_map", "pmap")


def make_mesh(devices: list | None = None) -> Mesh:
    """1-D mesh named 'batch' over all (global) devices."""
    return Mesh(np.asarray(devices or jax.devices()), (AXIS,))


def check_batch_size(global_batch: int, what: str = "config.batch_size") -> None:
    """Raises UserError unless the global batch is positive and splits evenly over the
    devices (`what` names it in the message)."""
    if global_batch < 1 or global_batch % jax.device_count():
        raise UserError(
            f"{what}={global_batch} must be positive and divisible by the number of devices "
            f"({jax.device_count()})"
        )


def sharded(fn: Callable, mesh: Mesh, out_batched: Any, donate_state: bool = False) -> Callable:
    """Runs per-device `fn(replicated, batch)` on all devices with shard_map under jit.

    The returned callable takes this process's part of the batch as host arrays [b, ...].

    `out_batched` is a pytree prefix of bools for the outputs: True for per-example outputs
    (split along 'batch'), False for values averaged or summed over devices (replicated).
    Checking of replication is left to the collectives in `fn`, exactly as under pmap.
    """
    out_specs = jax.tree.map(lambda b: P(AXIS) if b else P(), out_batched)
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=out_specs,
                           check_vma=False)
    jitted = jax.jit(mapped, donate_argnums=(0,) if donate_state else ())

    def run(replicated, local_batch):
        return jitted(replicated, global_batch(local_batch, mesh))

    run.lower = lambda replicated, local_batch: jitted.lower(
        replicated, global_batch(local_batch, mesh))
    return run


def pmapped(fn: Callable, mesh: Mesh, out_batched: Any, donate_state: bool = False) -> Callable:
    """The same per-device `fn(replicated, batch)` through jax.pmap over the mesh's devices;
    see `sharded`.

    Takes this process's batch as host arrays [b, ...] and returns per-example outputs as
    [b, ...], so callers see the same shapes as with `sharded`.
    """
    out_axes = jax.tree.map(lambda b: 0 if b else None, out_batched)
    local_devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    mapped = jax.pmap(fn, axis_name=AXIS, in_axes=(None, 0), out_axes=out_axes,
                      devices=list(mesh.devices.flat),
                      donate_argnums=(0,) if donate_state else ())

    def run(replicated, local_batch):
        n = len(local_devices)
        per_device = jax.tree.map(lambda x: np.asarray(x).reshape(n, -1, *x.shape[1:]),
                                  local_batch)
        out = mapped(replicated, per_device)
        return jax.tree.map(
            lambda b, o: jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), o) if b else o,
            out_batched, out)

    return run


def parallelize(fn: Callable, kind: str, mesh: Mesh, out_batched: Any,
                donate_state: bool = False) -> Callable:
    """Picks `sharded` or `pmapped` by config.parallel."""
    if kind == "shard_map":
        return sharded(fn, mesh, out_batched, donate_state)
    if kind == "pmap":
        return pmapped(fn, mesh, out_batched, donate_state)
    raise ValueError(f"config.parallel={kind!r}: choose one of {PARALLEL_CHOICES}")


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local arrays [b, ...] from this process -> global arrays [B, ...] split on 'batch'.
    Global arrays already placed so (by `prefetch_to_device`), and abstract global arrays
    (jax.ShapeDtypeStruct, for lowering ahead of time) with that sharding, pass through."""
    sharding = NamedSharding(mesh, P(AXIS))

    def place(x):
        if isinstance(x, jax.Array | jax.ShapeDtypeStruct) and x.sharding == sharding:
            return x
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(place, local_batch)


def prefetch_to_device(batches: Iterator[dict], kind: str, mesh: Mesh,
                       size: int = 2) -> Iterator[dict]:
    """Keeps `size` batches on the devices ahead of the step (global arrays split on 'batch'),
    so that the host-to-device copy of the next batch overlaps the running step. With pmap
    (`kind`), the batches pass through unchanged: pmap places them itself."""
    if kind != "shard_map":
        yield from batches
        return
    queue = collections.deque()

    def enqueue(count: int) -> None:
        for batch in itertools.islice(batches, count):
            queue.append(global_batch(batch, mesh))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device of the mesh holds the whole array (not stacked)."""
    return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree on every device of the mesh, replicated (not stacked)."""
    return jax.device_put(tree, replicated_sharding(mesh))
