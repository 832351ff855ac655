"""Where the train step's time goes: the UNet's convolutions, forward and backward, by XLA's
convolution (with the XLA:CPU flags nerve-jax sets) and, with the `bench` extra, by PyTorch.

  .venv/bin/python benchmarks/conv_speed.py [--height 128 --width 160 --batch 16 --features 32
      --depth 4 --repeats 7] [--unet]

By default one 3x3 convolution per UNet level: level l runs at (height, width) / 2**l with
features * 2**l channels in and out. With --unet, every convolution of the default
(pixel-shuffle) UNet at its own shape: each block's two 3x3 convolutions, the 1x1 upsampling
convolutions and the 1x1 head, the first one without an input gradient (the image needs none),
so the sum is the convolution work of one train step, to set against the step's time.
"forward" is the convolution, "backward" the input and kernel gradients of a sum of its output
times a fixed cotangent (biases left out). Medians of --repeats calls after one warm-up; the
last line is one JSON object. Run as a script it restarts once with glibc's huge pages
(nerve_jax/runtime/host_malloc.py), so both frameworks allocate the same way.
"""

import argparse
import functools
import os
import sys
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import nerve_jax  # noqa: E402, F401  (its XLA:CPU flags, set before the backend starts)
from benchmarks import common  # noqa: E402


class Conv(NamedTuple):
    """One convolution of the benchmark: [batch, height, width, cin] -> [..., cout]."""

    name: str
    height: int
    width: int
    cin: int
    cout: int
    size: int = 3  # Square kernel, stride 1, 'SAME' padding.
    input_grad: bool = True


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    for name, default in (("height", 128), ("width", 160), ("batch", 16), ("features", 32),
                          ("depth", 4), ("repeats", 7)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--unet", action="store_true",
                   help="every convolution of the UNet instead of one per level")
    return p.parse_args(argv)


def level_convolutions(height, width, features, depth) -> list[Conv]:
    return [Conv(f"level {level}", height >> level, width >> level, features << level,
                 features << level) for level in range(depth + 1)]


def unet_convolutions(height, width, features, depth, in_channels=1) -> list[Conv]:
    """The convolutions of nerve_jax.models.unet.UNet (upsample='pixel_shuffle'), in order."""
    convs = []
    channels = in_channels
    for level in range(depth + 1):
        h, w, f = height >> level, width >> level, features << level
        name = "bottleneck" if level == depth else f"encoder {level}"
        convs += [Conv(f"{name} conv 0", h, w, channels, f, input_grad=bool(convs)),
                  Conv(f"{name} conv 1", h, w, f, f)]
        channels = f
    for level in reversed(range(depth)):
        h, w, f = height >> level, width >> level, features << level
        convs += [Conv(f"upsample {level}", h // 2, w // 2, channels, 4 * f, size=1),
                  Conv(f"decoder {level} conv 0", h, w, 2 * f, f),
                  Conv(f"decoder {level} conv 1", h, w, f, f)]
        channels = f
    return convs + [Conv("head", height, width, channels, 1, size=1)]


def xla_conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


JAX_CONVS = {"xla": xla_conv}


def time_jax(conv, x, kernel, cotangent, input_grad, repeats):
    forward = jax.jit(conv)
    wrt = (0, 1) if input_grad else 1
    backward = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) * cotangent), wrt))
    times = {}
    for name, fn in (("forward", forward), ("backward", backward)):
        jax.block_until_ready(fn(x, kernel))
        times[name] = common.median(common.time_calls(
            lambda fn=fn: jax.block_until_ready(fn(x, kernel)), repeats))
    return times


def time_torch(x, kernel, cotangent, input_grad, repeats):
    import torch

    tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last).requires_grad_(input_grad)
    tk = torch.from_numpy(np.array(kernel)).permute(3, 2, 0, 1).contiguous().requires_grad_()
    tc = torch.from_numpy(np.array(cotangent)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    conv = functools.partial(torch.nn.functional.conv2d, padding=kernel.shape[0] // 2)
    wrt = (tx, tk) if input_grad else (tk,)

    def forward():
        with torch.no_grad():
            conv(tx, tk)

    output = conv(tx, tk)  # Recorded once: "backward" times the gradients alone, as in JAX.

    def backward():
        torch.autograd.grad(output, wrt, tc, retain_graph=True)

    times = {}
    for name, fn in (("forward", forward), ("backward", backward)):
        fn()
        times[name] = common.median(common.time_calls(fn, repeats))
    return times


def time_conv(conv: Conv, batch, columns, repeats, rng) -> dict:
    x = jnp.asarray(rng.normal(size=(batch, conv.height, conv.width, conv.cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(conv.size, conv.size, conv.cin, conv.cout))
                         / np.sqrt(conv.size**2 * conv.cin), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(batch, conv.height, conv.width, conv.cout)),
                            jnp.float32)
    args = (x, kernel, cotangent, conv.input_grad, repeats)
    times = {name: time_jax(fn, *args) for name, fn in JAX_CONVS.items()}
    if "torch" in columns:
        times["torch"] = time_torch(*args)
    return times


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    convs = (unet_convolutions if args.unet else level_convolutions)(
        args.height, args.width, args.features, args.depth)
    rng = np.random.default_rng(0)
    rows = []
    columns = [*JAX_CONVS, *(["torch"] if have_torch else [])]
    name_width = max(len(c.name) for c in convs)
    print(f"{'convolution':>{name_width}s} {'shape':>22s} {'pass':>8s} "
          + " ".join(f"{c:>9s}" for c in columns) + "   (ms, median)")
    for conv in convs:
        times = time_conv(conv, args.batch, columns, args.repeats, rng)
        shape = f"{conv.height}x{conv.width}x{conv.cin}->{conv.cout}"
        for pass_name in ("forward", "backward"):
            cells = " ".join(f"{1e3 * times[c][pass_name]:9.1f}" for c in columns)
            print(f"{conv.name:>{name_width}s} {shape:>22s} {pass_name:>8s} {cells}", flush=True)
        rows.append({**conv._asdict(), **{f"{c}_{p}_s": times[c][p] for c in columns
                                          for p in ("forward", "backward")}})
    totals = {f"{c}_{p}_s": sum(r[f"{c}_{p}_s"] for r in rows)
              for c in columns for p in ("forward", "backward")}
    print(f"{'sum':>{name_width}s} {'':>22s} {'fwd+bwd':>8s} " + " ".join(
        f"{1e3 * (totals[f'{c}_forward_s'] + totals[f'{c}_backward_s']):9.1f}" for c in columns))
    record = {"batch": args.batch, "unet": args.unet, "rows": rows, "totals": totals}
    common.print_json(record)
    return record


if __name__ == "__main__":
    common.run_main(main, huge_pages=True)  # Both frameworks run in this process, with them.
