"""The Flax UNet: output shapes and dtypes, its input-size rule, and its max-pool."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nerve_jax.models import unet


@pytest.mark.parametrize("upsample", ["pixel_shuffle", "transpose"])
def test_logits_have_the_input_size_and_float32(upsample):
    model = unet.UNet(depth=2, base_features=4, upsample=upsample, dtype=jnp.bfloat16)
    x = jnp.zeros((3, 16, 24, 1))
    # Shapes and dtypes only: nothing is computed.
    outputs, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
    assert outputs["logits"].shape == (3, 16, 24, 1) and outputs["logits"].dtype == jnp.float32
    assert set(outputs) == {"logits"}
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


@pytest.mark.slow
@pytest.mark.mutation
def test_batchnorm_statistics_move_in_training():
    model = unet.UNet(depth=1, base_features=2)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1)) + 3.0
    variables = jax.jit(model.init)(jax.random.key(0), x)
    _, updates = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables)
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"],
                         updates["batch_stats"])
    assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize("size,depth", [((32, 40), 4), ((420, 580), 3)])
def test_sizes_not_divisible_by_two_to_the_depth_are_refused(size, depth):
    with pytest.raises(ValueError, match=rf"must be divisible by 2\*\*depth = {2**depth}"):
        unet.check_input_size(size, depth)
    unet.check_input_size((size[0] * 2**depth, size[1] * 2**depth), depth)


def test_reshape_max_pool_equals_flax_max_pool():
    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
    np.testing.assert_array_equal(unet.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))
    ours = jax.grad(lambda v: (unet.max_pool_2x2(v) ** 2).sum())(x)
    flax_grad = jax.grad(lambda v: (nn.max_pool(v, (2, 2), (2, 2)) ** 2).sum())(x)
    np.testing.assert_allclose(ours, flax_grad)  # No ties in random normals.


@pytest.mark.slow
@pytest.mark.mutation
def test_without_batchnorm_the_convolutions_have_biases_and_no_statistics():
    model = unet.UNet(depth=1, base_features=2, norm="none", upsample="transpose")
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert "batch_stats" not in variables
    assert variables["params"]["ConvBlock_0"]["Conv_0"]["bias"].shape == (2,)


@pytest.mark.slow
@pytest.mark.mutation
def test_the_input_is_standardised_by_the_configured_statistics():
    plain = unet.UNet(depth=1, base_features=2, norm="none")
    standardised = unet.UNet(depth=1, base_features=2, norm="none", input_mean=0.4,
                             input_std=0.2)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
    variables = plain.init(jax.random.key(0), x)
    np.testing.assert_allclose(standardised.apply(variables, x)["logits"],
                               plain.apply(variables, (x - 0.4) / 0.2)["logits"], rtol=1e-5,
                               atol=1e-6)
