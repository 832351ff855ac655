"""Where the train step's time goes: one 3x3 'SAME' convolution per UNet level, forward and
backward, by XLA's convolution (with the XLA:CPU flags nerve-jax sets) and, with the `bench`
extra, by PyTorch.

  .venv/bin/python benchmarks/conv_speed.py [--height 128 --width 160 --batch 16 --features 32
      --depth 4 --repeats 7]

Level l of the UNet runs at (height, width) / 2**l with features * 2**l channels in and out.
"forward" is the convolution, "backward" the input and kernel gradients of a sum of its output
times a fixed cotangent. Medians of --repeats calls after one warm-up; the last line is one
JSON object. Run as a script it restarts once with glibc's huge pages (nerve_jax/host_malloc.py),
so both frameworks allocate the same way.
"""

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import nerve_jax  # noqa: E402, F401  (its XLA:CPU flags, set before the backend starts)
from benchmarks import common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    for name, default in (("height", 128), ("width", 160), ("batch", 16), ("features", 32),
                          ("depth", 4), ("repeats", 7)):
        p.add_argument(f"--{name}", type=int, default=default)
    return p.parse_args(argv)


def xla_conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


JAX_CONVS = {"xla": xla_conv}


def time_jax(conv, x, kernel, cotangent, repeats):
    forward = jax.jit(conv)
    backward = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) * cotangent), (0, 1)))
    times = {}
    for name, fn in (("forward", forward), ("backward", backward)):
        jax.block_until_ready(fn(x, kernel))
        times[name] = common.median(common.time_calls(
            lambda fn=fn: jax.block_until_ready(fn(x, kernel)), repeats))
    return times


def time_torch(x, kernel, cotangent, repeats):
    import torch

    tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    tk = torch.from_numpy(np.array(kernel)).permute(3, 2, 0, 1).contiguous().requires_grad_()
    tc = torch.from_numpy(np.array(cotangent)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    conv = functools.partial(torch.nn.functional.conv2d, padding=1)

    def forward():
        with torch.no_grad():
            conv(tx, tk)

    def backward():
        torch.autograd.grad((conv(tx, tk) * tc).sum(), (tx, tk))

    times = {}
    for name, fn in (("forward", forward), ("backward", backward)):
        fn()
        times[name] = common.median(common.time_calls(fn, repeats))
    return times


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    rng = np.random.default_rng(0)
    rows = []
    columns = [*JAX_CONVS, *(["torch"] if have_torch else [])]
    print(f"{'level':>5s} {'shape':>18s} {'pass':>8s} " + " ".join(f"{c:>9s}" for c in columns)
          + "   (ms, median)")
    for level in range(args.depth + 1):
        h, w, c = args.height >> level, args.width >> level, args.features << level
        x = jnp.asarray(rng.normal(size=(args.batch, h, w, c)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(3, 3, c, c)) / np.sqrt(9 * c), jnp.float32)
        cotangent = jnp.asarray(rng.normal(size=(args.batch, h, w, c)), jnp.float32)
        times = {name: time_jax(conv, x, kernel, cotangent, args.repeats)
                 for name, conv in JAX_CONVS.items()}
        if have_torch:
            times["torch"] = time_torch(x, kernel, cotangent, args.repeats)
        for pass_name in ("forward", "backward"):
            cells = " ".join(f"{1e3 * times[c][pass_name]:9.1f}" for c in columns)
            print(f"{level:5d} {f'{h}x{w}x{c}':>18s} {pass_name:>8s} {cells}", flush=True)
        rows.append({"level": level, "height": h, "width": w, "channels": c,
                     **{f"{c}_{p}_s": times[c][p] for c in columns
                        for p in ("forward", "backward")}})
    totals = {f"{c}_{p}_s": sum(r[f"{c}_{p}_s"] for r in rows)
              for c in columns for p in ("forward", "backward")}
    print("sum  " + " " * 19 + "fwd+bwd " + " ".join(
        f"{1e3 * (totals[f'{c}_forward_s'] + totals[f'{c}_backward_s']):9.1f}" for c in columns))
    common.print_json({"batch": args.batch, "rows": rows, "totals": totals})


if __name__ == "__main__":
    from nerve_jax import host_malloc

    host_malloc.reexec_with_huge_pages()  # Both frameworks run in this process, with them.
    main()
