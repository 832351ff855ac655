"""The XLA:CPU flags that runtime.configure() sets on the CPU backend."""

import os
import subprocess
import sys

import pytest

from nerve_jax.runtime import xla_flags


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
    # tests/conftest.py calls runtime.configure(), as the nerve-jax command does.
    if xla_flags.enabled():
        assert "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE" in os.environ[
            "XLA_FLAGS"]


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


@pytest.mark.slow
@pytest.mark.mutation
@pytest.mark.skipif(not xla_flags.enabled({}), reason="flags not set for this jaxlib")
def test_the_reduce_fusion_type_keeps_batchnorm_means_accurate():
    """A float32 mean of 49k values near 10: ~1e-7 relative error with nerve-jax's flag; with
    reductions fused into XLA's loops instead, more than 1e-6."""
    ours = _relative_error_of_a_mean(xla_flags.flags_with_cpu_defaults(""))
    other = _relative_error_of_a_mean(
        "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
    assert ours < 3e-7 < 1e-6 < other
