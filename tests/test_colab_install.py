"""Installing nerve-jax on a Google Colab runtime keeps what Colab preinstalled: pip resolves
the project with Colab's packages (tests/colab_constraints.txt) pinned, for the Python this test
runs on, adds no second TensorFlow, and replaces none of them. Needs the package index (CI has
it); packages installed here play no part (--ignore-installed)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CONSTRAINTS = Path(REPO) / "tests" / "colab_constraints.txt"
RUNTIMES = ("cpu", "gpu", "tpu")
# Distributions that install TensorFlow's `tensorflow/` package next to Colab's `tensorflow`.
OTHER_TENSORFLOWS = ("tensorflow-cpu", "tensorflow-intel", "tensorflow-gpu", "tf-nightly",
                     "tf-nightly-cpu", "tensorflow-tpu")
NETWORK_ERRORS = ("NewConnectionError", "Temporary failure in name resolution",
                  "Network is unreachable", "Failed to establish a new connection",
                  "ConnectTimeoutError")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def colab_pins(runtime: str) -> dict[str, str]:
    """{package: version} that Colab's `runtime` has preinstalled, from colab_constraints.txt."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        spec, _, tags = line.partition("#")
        if not spec.strip():
            continue
        if tags.split() and runtime not in tags.split():
            continue
        name, version = spec.strip().split("==")
        assert _canonical(name) not in pins, f"{name} pinned twice for {runtime}"
        pins[_canonical(name)] = version
    return pins


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_constraints_file_is_well_formed(runtime):
    pins = colab_pins(runtime)
    assert {"jax", "jaxlib", "numpy", "protobuf"} <= pins.keys()
    assert ("tensorflow" in pins) == (runtime != "tpu")  # TPU runtimes have no TensorFlow.


# On the TPU runtime, the plain install: Colab pairs jax 0.7.2 with libtpu 0.0.21.1, while the
# `tpu` extra (jax[tpu]==0.7.2) asks for libtpu==0.0.23 and would replace it.
@pytest.mark.slow
@pytest.mark.parametrize("extra, runtime, plugin", [("", "cpu", None),
                                                    ("cuda12", "gpu", "jax-cuda12-plugin"),
                                                    ("", "tpu", "libtpu")])
def test_install_on_colab_keeps_its_packages(extra, runtime, plugin, tmp_path):
    pins = colab_pins(runtime)
    pinned = [f"{name}=={version}" for name, version in pins.items()]
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(pinned) + "\n")
    report = tmp_path / "report.json"
    target = f"{REPO}[{extra}]" if extra else REPO
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
         "--report", str(report), "-c", str(constraints), target, *pinned],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    if (result.returncode and "ResolutionImpossible" not in result.stderr
            and any(error in result.stderr for error in NETWORK_ERRORS)):
        pytest.skip("the package index cannot be reached")
    assert result.returncode == 0, result.stderr[-3000:]
    installs = {_canonical(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}

    others = set(OTHER_TENSORFLOWS) & installs.keys()
    assert not others, f"a second TensorFlow: {sorted(others)}"
    assert "tensorflow" in installs and "nerve-jax" in installs
    for name in ("tensorflow", "jax", "jaxlib", "numpy", "protobuf"):
        if name in pins:
            assert installs[name] == pins[name], name  # Colab's own, not replaced.
    assert {name: installs.get(name) for name in pins} == pins
    if plugin:
        assert installs[plugin] == pins[plugin]
