"""config.model.dtype="bfloat16": the model computes in bfloat16; parameters, optimizer state,
BatchNorm statistics and the loss stay float32; it trains as float32 does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nerve_jax import step


def _bf16_config(test_config):
    config = test_config()
    config.model.dtype = "bfloat16"
    return config


def _equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (jit, remat, custom_vjp)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


@pytest.mark.slow
@pytest.mark.mutation
def test_bfloat16_convolutions_and_float32_state_and_loss(test_config):
    config = _bf16_config(test_config)
    state = step.create_train_state(config, jax.random.key(0), axis_name=None)
    h, w = config.image_size
    images = jax.random.uniform(jax.random.key(1), (4, h, w, 1))
    batch = {"image": images, "mask": (images > 0.7).astype(jnp.float32)}
    train_fn = step.per_device_train_step(config, axis_name=None)

    convolutions = [eqn for eqn in _equations(jax.make_jaxpr(train_fn)(state, batch).jaxpr)
                    if eqn.primitive.name == "conv_general_dilated"]
    assert convolutions  # Forward and backward.
    assert {str(v.aval.dtype) for eqn in convolutions for v in eqn.invars} == {"bfloat16"}

    new_state, metrics = jax.jit(train_fn)(state, batch)
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(metrics["loss"])
    for name, tree in [("params", new_state.params), ("batch_stats", new_state.batch_stats),
                       ("opt_state", new_state.opt_state)]:
        dtypes = {str(x.dtype) for x in jax.tree.leaves(tree)
                  if jnp.issubdtype(x.dtype, jnp.floating)}
        assert dtypes == {"float32"}, name
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params,
                         state.params)
    assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.slow
def test_bfloat16_training_follows_float32(test_config):
    """40 steps on one batch from the same initial state: bfloat16's loss falls as float32's
    does (measured: 0.640 to 0.2481 in float32, 0.2489 in bfloat16)."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = test_config()
        config.model.dtype = dtype
        state = step.create_train_state(config, jax.random.key(0), axis_name=None)
        train_fn = jax.jit(step.per_device_train_step(config, axis_name=None))
        h, w = config.image_size
        images = jax.random.uniform(jax.random.key(1), (8, h, w, 1))
        batch = {"image": images, "mask": (images > 0.7).astype(jnp.float32)}
        losses[dtype] = []
        for _ in range(40):
            state, metrics = train_fn(state, batch)
            losses[dtype].append(float(metrics["loss"]))
    f32, bf16 = losses["float32"], losses["bfloat16"]
    assert f32[-1] < 0.5 * f32[0]  # It trains: the comparison means something.
    assert abs(bf16[-1] - f32[-1]) < 0.01
    assert max(abs(a - b) for a, b in zip(f32, bf16, strict=True)) < 0.02


# Measured with benchmarks/bf16_quality.py on one CPU device (docs/distributed.md): bfloat16's
# best validation Dice minus float32's, same seed, was +0.038, -0.021 and +0.054 at seeds 0-2.
# Single runs of this small set-up can collapse in either dtype (float32 seed 2: 0.658, below
# all-empty; on 8 devices seed 0's bfloat16 run: 0.514), so the test reruns the benchmark as it
# was measured, one device, seed 0, where both dtypes train; a bfloat16 that trains worse fails.
BF16_TOLERANCE = 0.07


@pytest.mark.slow
@pytest.mark.benchmark  # 4 minutes on 2 cores: `bash scripts/test.sh -m benchmark`.
def test_bfloat16_trains_to_the_validation_dice_of_float32(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = subprocess.run([sys.executable, "benchmarks/bf16_quality.py", "--seeds", "0",
                             "--steps", "200", "--out", str(tmp_path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    f32, bf16 = json.loads(result.stdout.strip().splitlines()[-1])["rows"]
    assert (f32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
    assert f32["best_dice"] > f32["empty_dice"] + 0.1  # it learned; the comparison means something
    assert abs(bf16["best_dice"] - f32["best_dice"]) <= BF16_TOLERANCE, (f32, bf16)
