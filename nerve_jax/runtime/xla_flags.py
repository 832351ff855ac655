"""The XLA:CPU flags nerve-jax runs with, added to XLA_FLAGS by `runtime.configure()` on the CPU
backend, before JAX starts its backend.

`--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE` leaves only reductions on
YNNPACK: convolutions go back to XLA's own kernels and elementwise ops to XLA's loop fusions,
which are faster for these NHWC activations with few channels (docs/performance.md, "Train step
on the CPU", has the measurements).

A flag already present in XLA_FLAGS is left as the user set it; NERVE_JAX_XLA_CPU_FLAGS=0 turns
this off. An unknown flag aborts XLA, so it is only added for the jaxlib versions it was tested
with.
"""

import os

CPU_FLAGS = {
    # Reductions stay on YNNPACK. Other fusion types (e.g. INDIVIDUAL_CONVOLUTION) move them
    # to loops that lose digits in BatchNorm's statistics (tests/test_xla_flags.py).
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
}
TESTED_JAXLIB = ("0.10.",)
OPT_OUT_VARIABLE = "NERVE_JAX_XLA_CPU_FLAGS"


def flags_with_cpu_defaults(xla_flags: str, flags: dict[str, str] = CPU_FLAGS) -> str:
    """`xla_flags` plus every flag of `flags` it does not already set."""
    present = {item.lstrip("-").split("=", 1)[0] for item in xla_flags.split()}
    added = [f"--{name}={value}" for name, value in flags.items() if name not in present]
    return " ".join([xla_flags.strip(), *added]).strip()


def enabled(environ=os.environ) -> bool:
    if environ.get(OPT_OUT_VARIABLE, "1") == "0":
        return False
    try:
        from jaxlib import version
    except ImportError:
        return False
    return version.__version__.startswith(TESTED_JAXLIB)


def apply(environ=os.environ) -> bool:
    """Adds the CPU defaults to XLA_FLAGS if enabled; True when XLA_FLAGS now holds them."""
    if not enabled(environ):
        return False
    environ["XLA_FLAGS"] = flags_with_cpu_defaults(environ.get("XLA_FLAGS", ""))
    return True
