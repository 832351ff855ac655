"""How long a checkpoint save holds up training: asynchronous (orbax's default, what nerve-jax
uses) against synchronous saves, on the real sharded train step.

  .venv/bin/python benchmarks/save_stall.py [--height 128 --width 176 --batch 16 --features 32
      --depth 4 --steps 24 --save-every 4]

For each mode, runs --steps train steps (after one for compilation) and saves a checkpoint every
--save-every steps into a fresh folder, as the trainer does: the step time of a step that saves
includes the save call. Prints the median step time without a save, with a save, and their
difference (the stall) per mode.
The last line is one JSON object.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import common, train_throughput  # noqa: E402
from nerve_jax import checkpoint, parallel  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    train_throughput.add_config_flags(p)
    p.add_argument("--save-every", type=int, default=4)
    return p.parse_args(argv)


def run(config, steps: int, save_every: int, asynchronous: bool) -> dict:
    mesh = parallel.make_mesh()
    state, step = train_throughput.state_and_step(config, mesh)
    batch = train_throughput.synthetic_batch(config)
    state, _ = jax.block_until_ready(step(state, batch))
    folder = tempfile.mkdtemp(prefix="save_stall_")
    mngr = checkpoint.manager(folder, keep_latest=2, asynchronous=asynchronous)
    plain, saving = [], []
    try:
        for i in range(1, steps + 1):
            start = time.perf_counter()
            state, metrics = step(state, batch)
            if i % save_every == 0:
                checkpoint.save(mngr, i, state, None)
            jax.block_until_ready(metrics)
            (saving if i % save_every == 0 else plain).append(time.perf_counter() - start)
        start = time.perf_counter()
        checkpoint.wait(mngr)
        drain = time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"step_s_median": common.median(plain), "save_step_s_median": common.median(saving),
            "stall_s": common.median(saving) - common.median(plain), "final_wait_s": drain}


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = train_throughput.make_config(args)
    record = {"height": args.height, "width": args.width, "batch": args.batch,
              "features": args.features, "depth": args.depth, "steps": args.steps,
              "save_every": args.save_every}
    for mode, asynchronous in (("async", True), ("sync", False)):
        result = run(config, args.steps, args.save_every, asynchronous)
        record[mode] = result
        print(f"{mode:5s}  step {1e3 * result['step_s_median']:7.1f} ms   step with a save "
              f"{1e3 * result['save_step_s_median']:7.1f} ms   stall "
              f"{1e3 * result['stall_s']:+7.1f} ms", flush=True)
    common.print_json(record)
    return record


if __name__ == "__main__":
    common.run_main(main, huge_pages=True)
