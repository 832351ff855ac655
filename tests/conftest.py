"""Test set-up: the CPU backend with 8 forced devices, one JAX compilation cache for the run and
nerve-jax's runtime settings (before JAX starts), and a tiny synthetic Kaggle folder."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite runs on the CPU wherever it runs, and its processes (children too) skip probing
# for GPUs and TPUs: with libtpu installed for `nerve-jax aot`, each JAX start tried the TPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Most of the suite's CPU time was XLA compiling the same few programs again: in each command
# a test starts, each relaunch of a killed run, each training of a benchmark's smoke run. One
# persistent cache, made by the first process (pytest, or its xdist controller) and inherited
# by the workers and every child, compiles each once; it is removed when that process ends.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="nerve-jax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

from nerve_jax import runtime  # noqa: E402
from nerve_jax.runtime import host_malloc  # noqa: E402

# What each child process (the commands end to end, the killed and relaunched runs) would spend
# before any work, and need not: a nerve-jax command restarts itself once to give its allocator
# huge pages (host_malloc); the children get that setting from the start instead. And TensorFlow
# imports all of Keras (with matplotlib) as it starts, unless told to use the legacy tf_keras,
# whose absence it ignores: nothing in nerve-jax uses Keras. About 1 s of CPU per child together
# (docs/testing.md).
if host_malloc.should_reexec():
    os.environ["GLIBC_TUNABLES"] = host_malloc.tunables_with_huge_pages(
        os.environ.get("GLIBC_TUNABLES", ""))
if importlib.util.find_spec("tf_keras") is None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# The settings the nerve-jax command runs with (XLA:CPU flags among them), before JAX starts.
runtime.configure()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CONFIG = os.path.join(REPO, "configs", "test.py")

# The files that take longest (the 2-core run of docs/testing.md), longest first. pytest-xdist
# hands out whole files in collection order (scripts/test.sh: --no-loadscope-reorder), so these
# start first and the short ones fill in around them instead of one long file starting last.
LONGEST_FILES = ("test_multiprocess.py", "test_fault_tolerance.py", "test_gcs.py",
                 "test_quality_benchmark.py", "test_device_check.py", "test_notebook.py",
                 "test_aot.py", "test_tune.py", "test_install.py", "test_colab_install.py",
                 "test_inference.py", "test_train.py", "test_examples.py", "test_bf16.py",
                 "test_research_api.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.path))
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # Stable: each file's tests keep their order.


@pytest.fixture(scope="session")
def test_config():
    from nerve_jax import config_util

    return lambda: config_util.load_config_file(TEST_CONFIG)


@pytest.fixture(scope="session")
def tiny_kaggle_dir(tmp_path_factory):
    """4 subjects x 6 frames and 4 test images in Kaggle layout (synthetic)."""
    from nerve_jax.data import synthetic

    out = tmp_path_factory.mktemp("kaggle") / "data"
    synthetic.generate(str(out), num_subjects=4, frames_per_subject=6, num_test=4, seed=1)
    return str(out)


@pytest.fixture(autouse=True)
def tfds_default_dir(tmp_path, monkeypatch):
    """TFDS's default data_dir ($TFDS_DATA_DIR) in the test's own folder, never ~."""
    path = tmp_path / "tfds_default"
    monkeypatch.setenv("TFDS_DATA_DIR", str(path))
    return str(path)
