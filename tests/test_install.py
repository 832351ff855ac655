"""The accelerator extras resolve with pip against the jax installed here: JAX's own CUDA 12
plugin of the same version, and libtpu. Needs the package index (CI has it). An extra that is
already installed resolves to nothing new: what is installed is then what pip found fitting."""

import json
import subprocess
import sys
from importlib import metadata

import pytest

from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.parametrize("extra, wanted", [("cuda12", "jax-cuda12-plugin"), ("tpu", "libtpu")])
def test_accelerator_extras_resolve(extra, wanted, tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
         f".[{extra}]"], cwd=REPO, capture_output=True, text=True, timeout=600)
    if result.returncode and ("NewConnectionError" in result.stderr
                              or "Temporary failure in name resolution" in result.stderr):
        pytest.skip("the package index cannot be reached")
    assert result.returncode == 0, result.stderr[-2000:]
    installs = {item["metadata"]["name"]: item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    # Already installed (CI installs the tpu extra): pip found the installed one fitting.
    version = installs[wanted] if wanted in installs else metadata.version(wanted)
    assert "jax" not in installs and "jaxlib" not in installs  # The installed jax is kept.
    if extra == "cuda12":
        assert version == metadata.version("jax")
