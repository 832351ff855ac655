"""XLA:CPU flags that nerve-jax sets at import, before JAX creates its backends.

Measured on the train step (benchmarks/compare_torch.py --jax-defaults; README, Performance):
`--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE` leaves only reductions on
YNNPACK.
- Convolutions go back to XLA's own Eigen kernels: YNNPACK's 3x3 convolutions on NHWC
  activations with few channels ran 2-3x slower here (128x160x32: forward 127 -> 58 ms, weight
  gradient 348 -> 128 ms).
- Elementwise ops go back to XLA's loop fusions: as YNNPACK fusions, BatchNorm's normalise,
  ReLU and their gradients took ~9% more of the train step (3170 -> 2900 ms).
- Dots (only the 1x1 upsampling convolutions' few) do not matter either way.

It only touches the CPU backend, so it is harmless where a GPU or TPU does the work. A flag
already present in XLA_FLAGS is left as the user set it; NERVE_JAX_XLA_CPU_FLAGS=0 turns this off.
An unknown flag aborts XLA, so it is only added for the jaxlib versions it was tested with.
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
