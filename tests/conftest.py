"""Test set-up: 8 forced CPU devices and nerve-jax's runtime settings (before JAX starts), and
a tiny synthetic Kaggle folder."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from nerve_jax import runtime  # noqa: E402

# The settings the nerve-jax command runs with (XLA:CPU flags among them), before JAX starts.
runtime.configure()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CONFIG = os.path.join(REPO, "configs", "test.py")


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
