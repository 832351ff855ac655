"""What notebooks/colab.ipynb calls besides the `nerve-jax` commands: running them with their
output in the cell, the accelerator and its config, and showing figures inline.

Every command runs in its own process, as on a terminal: the notebook's kernel never starts
JAX, so it never holds the TPU or GPU that the command needs.
"""

import os
import subprocess
import sys

from nerve_jax import fileio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"tpu": "tpu.py", "gpu": "gpu.py", "cpu": "quickstart.py"}


def smoke() -> bool:
    """NERVE_JAX_SMOKE=1: tiny synthetic data and a few steps (the test suite runs the
    notebook this way)."""
    return os.environ.get("NERVE_JAX_SMOKE") == "1"


def on_colab() -> bool:
    return "google.colab" in sys.modules


def cli(*args: str) -> None:
    """`nerve-jax ARGS` in a child process, its output shown as it comes; CalledProcessError
    (the cell fails) when it exits non-zero."""
    command = [sys.executable, "-m", "nerve_jax.cli", *map(str, args)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, ["nerve-jax", *args])


def accelerator() -> str:
    """"tpu", "gpu" or "cpu": JAX's default backend, asked in a child process."""
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def config_file(backend: str) -> str:
    """configs/tpu.py, gpu.py or quickstart.py (CPU) of the checkout nerve-jax runs from."""
    path = os.path.join(REPO, "configs", CONFIGS[backend])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no configs/ next to the nerve_jax package; install "
                                "nerve-jax from a clone of its repository (pip install -e .)")
    return path


def show(*paths: str, width: int = 900) -> None:
    """PNG figures (local or gs://) inline in the notebook."""
    from IPython.display import Image, display

    for path in paths:
        display(Image(data=fileio.read_bytes(path), width=width))
