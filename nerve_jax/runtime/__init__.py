"""Process settings for running nerve-jax, applied explicitly; importing nerve_jax applies none.

The `nerve-jax` command and the benchmarks call `configure()` before any JAX or TensorFlow work,
and a notebook or script may call it too:

    from nerve_jax import runtime
    runtime.configure()          # before the first JAX computation

What it sets:
- on the CPU backend only, nerve-jax's XLA:CPU flags (xla_flags.py), added to XLA_FLAGS: XLA
  reads them when JAX starts its backend, so they do nothing after that (configure says so);
- nerve-jax's own log lines (logger "nerve_jax") printed plainly on stderr;
- unless `verbose`, other libraries' absl/Python log lines below ERROR hidden (orbax, TFDS),
  TensorFlow's C++ lines below ERROR too (TF_CPP_MIN_LOG_LEVEL=2 unless set), and TensorFlow's
  start-up lines dropped (`start_tensorflow`).

Huge pages (host_malloc.py) need a restart of the process, so a program's entry point asks for
them itself, first thing: `runtime.reexec_with_huge_pages()`.
"""

import contextlib
import glob
import importlib.metadata
import importlib.util
import logging
import os
import sys
import tempfile

from nerve_jax.runtime import host_malloc, xla_flags

LOGGER = "nerve_jax"
# TensorFlow >= 2.20 prints these at import whatever TF_CPP_MIN_LOG_LEVEL says.
TENSORFLOW_START_UP_LINES = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    # The tensorflow wheel (CUDA-capable) on a machine without NVIDIA drivers:
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
)

_verbose = False


def accelerator_expected(environ=os.environ) -> bool:
    """True when JAX will run on a GPU or TPU: JAX_PLATFORMS names one first, or (unset) a JAX
    GPU/TPU plugin is installed, or libtpu on a host with TPU chips attached (libtpu alone is
    also `nerve-jax aot`'s compiler on CPU-only machines, where JAX runs on the CPU). Decided
    without starting JAX."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    if importlib.util.find_spec("jax_plugins") is not None:
        return True
    return importlib.util.find_spec("libtpu") is not None and tpu_chips_attached()


# PCI ids of TPU chips: Google's vendor id and the device ids JAX itself looks for
# (jax._src.hardware_utils, which decides whether JAX starts its TPU backend).
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")


def tpu_chips_attached(pci_root: str = "/sys/bus/pci/devices") -> bool:
    """True when a TPU chip is on this host's PCI bus (read from sysfs, without JAX)."""
    for vendor_path in glob.glob(os.path.join(pci_root, "*", "vendor")):
        folder = os.path.dirname(vendor_path)
        try:
            with open(vendor_path) as vendor, open(os.path.join(folder, "device")) as device:
                if (vendor.read().strip() == _GOOGLE_PCI_VENDOR
                        and device.read().strip() in _TPU_PCI_DEVICES):
                    return True
        except OSError:
            continue
    return False


def _jax_backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def configure(verbose: bool = False, environ=os.environ) -> dict:
    """Applies the settings above; returns what it did: {"cpu_flags": bool, "verbose": bool}."""
    global _verbose
    _verbose = verbose
    cpu_flags = False
    if not accelerator_expected(environ):
        current = environ.get("XLA_FLAGS", "")
        if not _jax_backend_started():
            cpu_flags = xla_flags.apply(environ)
        elif xla_flags.enabled(environ) and xla_flags.flags_with_cpu_defaults(current) != current:
            logger().warning("runtime.configure(): JAX has started already, so nerve-jax's "
                             "XLA:CPU flags cannot take effect in this process")
        else:
            cpu_flags = xla_flags.enabled(environ)  # Set before JAX started, or opted out.
    if not verbose:  # TensorFlow's C++ INFO and WARNING lines (tf.data's among them).
        environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _configure_logs(verbose)
    return {"cpu_flags": cpu_flags, "verbose": verbose}


def verbose() -> bool:
    """Whether configure(verbose=True) asked for every library's lines."""
    return _verbose


def logger() -> logging.Logger:
    return logging.getLogger(LOGGER)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (notebooks and pytest replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_logs(verbose: bool) -> None:
    ours = logger()
    if not any(isinstance(h, _StderrHandler) for h in ours.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    ours.propagate = False
    # absl's Python logger carries orbax's and TFDS's lines ("read_only=True, setting
    # save_interval_steps=0" at every read-only restore).
    logging.getLogger("absl").setLevel(logging.INFO if verbose else logging.ERROR)


@contextlib.contextmanager
def _stderr_without(lines: tuple[str, ...]):
    """Collects what is written to file descriptor 2 (C++ logs too) and passes on every line
    that contains none of `lines`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not any(noise in line for noise in lines)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def start_tensorflow():
    """Imports TensorFlow for the input pipeline and keeps it off the GPUs and TPUs that JAX
    uses. Its start-up log lines are dropped unless configure(verbose=True). Returns `tf`."""
    quiet = "tensorflow" not in sys.modules and not _verbose
    with _stderr_without(TENSORFLOW_START_UP_LINES) if quiet else contextlib.nullcontext():
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # Looks for GPUs: CUDA start-up lines.
        tf.config.set_visible_devices([], "TPU")
    return tf


def reexec_with_huge_pages(environ=os.environ) -> None:
    """On the CPU backend, restarts this process once with glibc's huge pages for big
    allocations (host_malloc.py). Call it first thing in a program's entry point."""
    if not accelerator_expected(environ):
        host_malloc.reexec_with_huge_pages(environ)
