"""The XLA:CPU flags nerve_jax sets at import, and the max-pool they come with."""

import flax.linen as nn
import jax
import numpy as np

from nerve_jax import xla_flags
from nerve_jax.models import unet


def test_defaults_are_added_and_user_flags_win():
    flags = xla_flags.flags_with_cpu_defaults("--xla_force_host_platform_device_count=8")
    assert flags.split() == ["--xla_force_host_platform_device_count=8",
                             "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE"]
    mine = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
    assert xla_flags.flags_with_cpu_defaults(mine) == mine


def test_apply_honours_the_opt_out():
    environ = {"XLA_FLAGS": "--a=1", xla_flags.OPT_OUT_VARIABLE: "0"}
    assert not xla_flags.apply(environ)
    assert environ["XLA_FLAGS"] == "--a=1"
    environ = {"XLA_FLAGS": "--a=1"}
    assert xla_flags.apply(environ) == xla_flags.enabled({})
    if xla_flags.enabled({}):
        assert environ["XLA_FLAGS"].startswith("--a=1 --xla_cpu_experimental_ynn_fusion_type")


def test_this_process_runs_with_them():
    import os

    if xla_flags.enabled():
        assert "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE" in os.environ[
            "XLA_FLAGS"]


def test_reshape_max_pool_equals_flax_max_pool():
    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
    np.testing.assert_array_equal(unet.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))
    ours = jax.grad(lambda v: (unet.max_pool_2x2(v) ** 2).sum())(x)
    flax_grad = jax.grad(lambda v: (nn.max_pool(v, (2, 2), (2, 2)) ** 2).sum())(x)
    np.testing.assert_allclose(ours, flax_grad)  # No ties in random normals.
