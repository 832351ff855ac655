"""The XLA:CPU flags nerve_jax sets at import, and the max-pool they come with."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

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


REDUCTION_ERROR = """
import jax, numpy as np
x = np.random.default_rng(0).random((8, 32, 48, 4), dtype=np.float32) + 10
mean = jax.jit(lambda v: v.mean((0, 1, 2)))(x)
print(float(np.max(np.abs(mean / x.astype(np.float64).mean((0, 1, 2)) - 1))))
"""


def _relative_error_of_a_mean(flags: str) -> float:
    env = {**os.environ, "XLA_FLAGS": flags}
    out = subprocess.run([sys.executable, "-c", REDUCTION_ERROR], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


@pytest.mark.skipif(not xla_flags.enabled({}), reason="flags not set for this jaxlib")
def test_the_reduce_fusion_type_keeps_batchnorm_means_accurate():
    """A float32 mean of 49k values near 10: ~1e-7 relative error with nerve-jax's flag; with
    reductions fused into XLA's loops instead, more than 1e-6."""
    ours = _relative_error_of_a_mean(xla_flags.flags_with_cpu_defaults(""))
    other = _relative_error_of_a_mean(
        "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
    assert ours < 3e-7 < 1e-6 < other
