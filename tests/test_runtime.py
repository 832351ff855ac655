"""Importing nerve_jax changes nothing; runtime.configure() and start_tensorflow() do."""

import json
import os
import subprocess
import sys

import pytest

from nerve_jax import runtime
from nerve_jax.runtime import xla_flags

IMPORT_PROBE = """
import json, os, sys
before = dict(os.environ)
import nerve_jax
import tensorflow_datasets as tfds
after = dict(os.environ)
print(json.dumps({
    "changed": sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)),
    "modules": [m for m in ("jax", "tensorflow", "matplotlib") if m in sys.modules],
    "registered": "ultrasound_nerve" in tfds.list_builders(with_community_datasets=False),
}))
"""


def _clean_env() -> dict:
    """This environment without what the test session itself set."""
    return {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")}


def test_import_leaves_the_process_alone_and_registers_the_tfds_builder():
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], env=_clean_env(), check=True,
                         capture_output=True, text=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found == {"changed": [], "modules": [], "registered": True}


@pytest.mark.parametrize("environ, expected", [
    ({"JAX_PLATFORMS": "cpu"}, False),
    ({"JAX_PLATFORMS": "cuda,cpu"}, True),
    ({"JAX_PLATFORMS": "tpu"}, True),
])
def test_accelerator_expected_follows_jax_platforms(environ, expected):
    assert runtime.accelerator_expected(environ) is expected


def test_cpu_flags_only_where_the_cpu_runs_jax():
    on_gpu = {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": "--a=1"}
    assert runtime.configure(environ=on_gpu)["cpu_flags"] is False
    assert on_gpu["XLA_FLAGS"] == "--a=1"


CONFIGURE_PROBE = """
import json, os
from nerve_jax import runtime
{before}
done = runtime.configure()
print(json.dumps({{"done": done, "xla_flags": os.environ.get("XLA_FLAGS", "")}}))
"""


@pytest.mark.slow
@pytest.mark.mutation
@pytest.mark.skipif(not xla_flags.enabled({}), reason="flags not set for this jaxlib")
@pytest.mark.parametrize("jax_started", [False, True])
def test_configure_adds_the_cpu_flags_only_before_jax_starts(jax_started):
    before = "import jax; jax.devices()" if jax_started else ""
    env = {**_clean_env(), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", CONFIGURE_PROBE.format(before=before)],
                            env=env, check=True, capture_output=True, text=True)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["done"]["cpu_flags"] is not jax_started
    assert ("LIBRARY_FUSION_TYPE_REDUCE" in found["xla_flags"]) is not jax_started
    assert ("cannot take effect" in result.stderr) is jax_started


TENSORFLOW_PROBE = """
import sys
from nerve_jax import runtime
runtime.configure(verbose={verbose})
runtime.start_tensorflow()
print("a line of our own", file=sys.stderr)
"""


@pytest.mark.slow  # A child process that starts TensorFlow.
@pytest.mark.mutation
@pytest.mark.parametrize("verbose", [False, True])
def test_tensorflow_start_up_lines_are_dropped_unless_verbose(verbose):
    stderr = subprocess.run([sys.executable, "-c", TENSORFLOW_PROBE.format(verbose=verbose)],
                            env=_clean_env(), check=True, capture_output=True,
                            text=True).stderr
    assert "a line of our own" in stderr
    noise = [line for line in stderr.splitlines()
             if any(s in line for s in runtime.TENSORFLOW_START_UP_LINES)]
    assert bool(noise) is verbose


def test_our_lines_are_shown_and_other_libraries_warnings_hidden(capfd):
    import logging

    runtime.configure()
    runtime.logger().info("dropped 3 frames")
    logging.getLogger("absl").warning("Given directory is read only")
    err = capfd.readouterr().err
    assert "dropped 3 frames" in err
    assert "read only" not in err
    runtime.configure(verbose=True)
    assert logging.getLogger("absl").isEnabledFor(logging.INFO)
    runtime.configure()


class _FakePlugin:
    name = "cuda"


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_accelerator_hosts_get_no_cpu_start_up_work(platform, monkeypatch):
    """On a GPU or TPU host (simulated: JAX_PLATFORMS, or a JAX plugin installed), neither the
    XLA:CPU flags nor the huge-page restart, whose only purpose is the CPU backend."""
    from nerve_jax.runtime import host_malloc

    restarts = []
    monkeypatch.setattr(host_malloc, "reexec_with_huge_pages", restarts.append)
    by_platform = {"JAX_PLATFORMS": platform, "XLA_FLAGS": ""}
    runtime.reexec_with_huge_pages(by_platform)
    assert runtime.configure(environ=by_platform)["cpu_flags"] is False
    assert by_platform["XLA_FLAGS"] == ""

    monkeypatch.setattr(runtime.importlib.metadata, "entry_points",
                        lambda group: [_FakePlugin()] if group == "jax_plugins" else [])
    by_plugin = {"XLA_FLAGS": ""}
    assert runtime.accelerator_expected(by_plugin)
    runtime.reexec_with_huge_pages(by_plugin)
    assert runtime.configure(environ=by_plugin)["cpu_flags"] is False
    assert restarts == []

    on_cpu = {"JAX_PLATFORMS": "cpu"}
    runtime.reexec_with_huge_pages(on_cpu)
    assert restarts == [on_cpu]  # The same call does restart on the CPU backend.


def test_one_process_decides_alone():
    from nerve_jax.errors import UserError
    from nerve_jax.runtime import distributed

    assert distributed.any_process(True, False, False) == (True, False, False)
    distributed.all_agree(True, "unused")
    with pytest.raises(UserError, match="the dataset is missing"):
        distributed.all_agree(False, "the dataset is missing")


def test_several_processes_agree_only_at_sync_points(monkeypatch):
    """The training loop's agreement on stop requests and timed checkpoints (a host collective)
    comes at every step with one process, with several only at log/evaluation steps and every
    AGREE_EVERY_STEPS steps, so that steps in between are dispatched without waiting."""
    import jax

    from nerve_jax.runtime import distributed

    every = distributed.AGREE_EVERY_STEPS
    assert all(distributed.agreement_due(step, False) for step in range(1, 2 * every))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    due = [step for step in range(1, 3 * every + 1) if distributed.agreement_due(step, False)]
    assert due == [every, 2 * every, 3 * every]
    assert distributed.agreement_due(7, at_sync_point=True)
