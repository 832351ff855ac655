"""Train-step throughput of the nerve-jax UNet: full jitted, sharded steps after compilation.

  .venv/bin/python benchmarks/train_throughput.py [--height 128 --width 160 --batch 16
      --features 32 --depth 4 --steps 20 --upsample pixel_shuffle]

Prints per-step times, then one JSON line with images_per_s, compile_s, peak_rss_mb,
gflop_per_image (XLA cost analysis), mfu (model FLOP utilisation against this CPU's FP32 peak)
and, with --inference, full-resolution inference throughput (resize, forward, upsample,
threshold, RLE).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from nerve_jax import config_util, parallel, rle, runtime, step  # noqa: E402
from nerve_jax.runtime import xla_flags  # noqa: E402
from nerve_jax.runtime.host_malloc import TUNABLE  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_config_flags(p)
    p.add_argument("--inference", action="store_true",
                   help="also time full-resolution inference")
    return p.parse_args(argv)


def add_config_flags(parser, parallel_choice: bool = True) -> None:
    """The step flags every benchmark shares, plus the model dtype and (if `parallel_choice`)
    --parallel; without it make_config gets the jitted shard_map step."""
    common.add_step_flags(parser)
    parser.add_argument("--dtype", default="float32")
    if parallel_choice:
        parser.add_argument("--parallel", default="shard_map", choices=parallel.PARALLEL_CHOICES)
    else:
        parser.set_defaults(parallel="shard_map")


def make_config(args):
    config = config_util.load_config_file(os.path.join(REPO, "configs", "default.py"))
    config.image_size = (args.height, args.width)
    config.batch_size = args.batch
    config.model.base_features = args.features
    config.model.depth = args.depth
    config.model.upsample = args.upsample
    config.model.dtype = args.dtype
    config.parallel = args.parallel
    config.optimizer = "adamw"
    config.weight_decay = 0.0  # Plain Adam, as in the reference.
    return config


def synthetic_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    h, w = config.image_size
    image = rng.random((config.batch_size, h, w, 1), dtype=np.float32)
    mask = np.zeros((config.batch_size, h, w, 1), np.float32)
    mask[:, h // 3: h // 2, w // 2: 3 * w // 4] = 1.0
    return {"image": image, "mask": mask}


def state_and_step(config, mesh):
    """A replicated fresh train state and the real sharded train step (donating the state)."""
    state = parallel.replicate(step.create_train_state(config, jax.random.key(0)), mesh)
    train_fn = parallel.parallelize(step.per_device_train_step(config), config.parallel, mesh,
                                    out_batched=(False, False), donate_state=True)
    return state, train_fn


def time_train(config, steps, warmup):
    mesh = parallel.make_mesh()
    state, train_fn = state_and_step(config, mesh)
    batch = synthetic_batch(config)
    flops = None
    start = time.perf_counter()
    if config.parallel == "shard_map":
        cost = train_fn.lower(state, batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost["flops"]) * mesh.size  # Cost analysis counts one device's program.
    else:
        state, _ = jax.block_until_ready(train_fn(state, batch))  # The old state was donated.
    compile_s = time.perf_counter() - start  # Lowering + XLA compilation (pmap: + one step).
    for _ in range(warmup):
        state, _ = train_fn(state, batch)
    jax.block_until_ready(state)

    def one_step():
        nonlocal state
        state, m = train_fn(state, batch)
        jax.block_until_ready(m)

    return common.time_calls(one_step, steps), compile_s, flops, state


def time_inference(config, state, steps):
    """Full-resolution inference on uint8 420x580 frames: resize, forward, upsample, threshold,
    RLE, as `nerve-jax predict` does (the resize runs in tf.data there)."""
    from nerve_jax.data import pipeline

    runtime.start_tensorflow()
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (config.batch_size, 420, 580, 1), dtype=np.uint8)
    predict = parallel.parallelize(
        lambda s, b: step.masks_from_probabilities(
            step.predict_step(s, b)["probs"], 0.5, 0),
        config.parallel, parallel.make_mesh(), out_batched=True)

    def run():
        images = pipeline.resize_image(frames, tuple(config.image_size)).numpy()
        masks = np.asarray(predict(state, {"image": images}))
        return [rle.encode(m) for m in masks]

    run()
    return common.time_calls(run, steps)


def main(argv=None):
    args = parse_args(argv)
    config = make_config(args)
    times, compile_s, flops, state = time_train(config, args.steps, args.warmup)
    step_s = common.median(times)
    images_per_s = config.batch_size / step_s
    peak = common.cpu_peak_gflops()
    record = {
        "framework": "jax", "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": jax.device_count(), "height": args.height, "width": args.width,
        "batch": args.batch, "features": args.features, "depth": args.depth,
        "upsample": args.upsample, "dtype": args.dtype, "parallel": args.parallel,
        "project_xla_flags": xla_flags.enabled(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "huge_pages": TUNABLE in os.environ.get("GLIBC_TUNABLES", ""),
        "steps": args.steps, "step_s_median": step_s, "step_s_min": min(times),
        "images_per_s": images_per_s, "compile_s": compile_s,
    }
    if flops is not None:
        gflop_step = flops / 1e9
        record.update(gflop_per_image=gflop_step / config.batch_size,
                      achieved_gflops=gflop_step / step_s, cpu_peak_gflops=peak,
                      mfu=gflop_step / step_s / peak)
    print(f"train step: median {step_s * 1e3:.1f} ms, {images_per_s:.1f} images/s "
          f"(compile {compile_s:.1f} s)")
    if "mfu" in record:
        print(f"  {record['gflop_per_image']:.2f} GFLOP/image, {record['achieved_gflops']:.1f} "
              f"GFLOP/s = {100 * record['mfu']:.1f}% of {peak:.1f} GFLOP/s FP32 peak")
    if args.inference:
        inference_s = common.median(time_inference(config, state, max(3, args.steps // 2)))
        record["inference_images_per_s"] = config.batch_size / inference_s
        print(f"inference at 420x580 (resize, forward, upsample, threshold, RLE): "
              f"{record['inference_images_per_s']:.1f} images/s")
    record["peak_rss_mb"] = common.peak_rss_mb()
    common.print_json(record)
    return record


if __name__ == "__main__":
    common.run_main(main, huge_pages=True)
