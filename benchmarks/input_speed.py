"""Input pipeline rate vs train-step rate at a config (default: configs/default.py).

  .venv/bin/python benchmarks/input_speed.py [--config configs/default.py --subjects 8
      --frames 60 --batches 40 --steps 3]

Builds a synthetic Kaggle folder and its TFDS dataset in a temporary folder, then times:
  cold:  the first pass of `pipeline.train_batches` (PNG decode, resize, cache fill);
  warm:  batches after the cache is full (what every later epoch costs);
  step:  the real jitted train step on those batches, after compilation.
Prints images/s for each and the warm-input / step ratio; the last line is one JSON object.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from nerve_jax import config_util, parallel, runtime, step  # noqa: E402
from nerve_jax.data import pipeline, synthetic, tfds_builder  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "configs", "default.py"))
    p.add_argument("--subjects", type=int, default=8)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--batches", type=int, default=40, help="warm batches timed")
    p.add_argument("--steps", type=int, default=3, help="train steps timed")
    return p.parse_args(argv)


def time_batches(batches, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    runtime.start_tensorflow()
    config = config_util.load_config_file(args.config)
    frames = args.subjects * args.frames
    batch = config.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.generate(os.path.join(tmp, "data"), num_subjects=args.subjects,
                           frames_per_subject=args.frames, num_test=16, seed=0,
                           workers=os.cpu_count() or 1)
        builder = tfds_builder.prepare(os.path.join(tmp, "data"), os.path.join(tmp, "tfds"))
        subjects = list(range(1, args.subjects + 1))
        start = time.perf_counter()  # The first epoch includes loading the frames.
        batches = pipeline.train_batches(builder, subjects, config.image_size, batch,
                                         config.seed)
        cold_batches = frames // batch
        cold_s = time.perf_counter() - start + time_batches(batches, cold_batches)
        warm_s = time_batches(batches, args.batches)

        mesh = parallel.make_mesh()
        state = parallel.replicate(step.create_train_state(config, jax.random.key(0)), mesh)
        train_step = step.parallel_train_step(config, mesh)
        state, metrics = train_step(state, next(batches))  # Compilation.
        jax.block_until_ready(metrics)

        def one_step():
            nonlocal state
            state, m = train_step(state, next(batches))
            jax.block_until_ready(m)

        step_s = common.median(common.time_calls(one_step, args.steps))

    record = {
        "config": os.path.relpath(args.config, REPO), "image_size": list(config.image_size),
        "batch": batch, "frames": frames,
        "cold_images_per_s": cold_batches * batch / cold_s,
        "warm_images_per_s": args.batches * batch / warm_s,
        "step_images_per_s": batch / step_s, "step_s_median": step_s,
    }
    record["warm_input_over_step"] = record["warm_images_per_s"] / record["step_images_per_s"]
    record["cold_input_over_step"] = record["cold_images_per_s"] / record["step_images_per_s"]
    print(f"input, first pass (decode + resize + cache): {record['cold_images_per_s']:.0f} "
          f"images/s")
    print(f"input, cached epochs: {record['warm_images_per_s']:.0f} images/s")
    print(f"train step ({config.image_size[0]}x{config.image_size[1]}, batch {batch}): "
          f"{record['step_images_per_s']:.1f} images/s")
    print(f"input / step: {record['warm_input_over_step']:.0f}x cached, "
          f"{record['cold_input_over_step']:.0f}x first pass")
    common.print_json(record)


if __name__ == "__main__":
    common.run_main(main)
