"""Where the train step's thread time goes, by kind of XLA operation, from a jax.profiler trace.

  .venv/bin/python benchmarks/profile_step.py [--steps 3 --top 15]
      [--height 128 --width 160 --batch 16 --features 32 --depth 4 --upsample pixel_shuffle]

Traces --steps compiled train steps (after one untimed step) and sums, per step, the duration of
every event XLA:CPU's worker threads record, grouped by kind: the fusion kind
(`transpose_copy_fusion`, `ynn_fusion` for YNNPACK, ...) or the operation. The convolutions'
Eigen work is not named in the trace; `ThunkExecutor::Execute` is a worker draining XLA's
queue of operations, and some fusion events nest inside it, so that row is not additive with
the others. Thread time adds over threads, so a category can exceed the step's wall time. Prints the
categories and the --top single operations; the last line is one JSON object. Run as a script
it restarts once with glibc's huge pages, as `nerve-jax` does.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import common, train_throughput  # noqa: E402
from nerve_jax import parallel  # noqa: E402

WORKER_THREADS = "XLAEigen"  # XLA:CPU's intra-op threads, as the trace names them.


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    train_throughput.add_config_flags(p)
    p.set_defaults(steps=3)
    p.add_argument("--top", type=int, default=15, help="single operations to list")
    return p.parse_args(argv)


def category(event_name: str) -> str:
    """'transpose_copy_fusion.12' -> 'transpose_copy_fusion'; 'convolution.3' -> 'convolution'."""
    return re.sub(r"[._]?\d+$", "", event_name)


def worker_event_ms(xspace, steps: int) -> collections.Counter:
    """Per-step milliseconds of each event name on XLA's worker threads."""
    totals = collections.Counter()
    for plane in xspace.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if WORKER_THREADS not in line.name:
                continue
            for event in line.events:
                totals[names.get(event.metadata_id, "?")] += event.duration_ps / 1e9 / steps
    return totals


def load_xspace(logdir: str):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise RuntimeError(f"jax.profiler wrote no *.xplane.pb under {logdir}")
    xspace = xplane_pb2.XSpace()
    with open(paths[0], "rb") as f:
        xspace.ParseFromString(f.read())
    return xspace


def profile(config, steps: int) -> tuple[collections.Counter, float]:
    """(per-step ms by event name on worker threads, wall ms per traced step)."""
    state, step = train_throughput.state_and_step(config, parallel.make_mesh())
    batch = train_throughput.synthetic_batch(config)
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        with jax.profiler.trace(logdir):
            for _ in range(steps):
                state, metrics = step(state, batch)
                jax.block_until_ready(metrics)
        wall_ms = (time.perf_counter() - start) / steps * 1e3
        events = worker_event_ms(load_xspace(logdir), steps)
    return events, wall_ms


def main(argv=None) -> dict:
    args = parse_args(argv)
    events, wall_ms = profile(train_throughput.make_config(args), args.steps)
    categories = collections.Counter()
    for name, ms in events.items():
        categories[category(name)] += ms
    print(f"traced step: {wall_ms:.0f} ms wall (the profiler adds some); thread ms per step:")
    for name, ms in categories.most_common():
        if ms >= 0.5:
            print(f"{ms:9.1f}  {name}")
    print(f"top {args.top} operations, thread ms per step:")
    for name, ms in events.most_common(args.top):
        print(f"{ms:9.1f}  {name}")
    record = {"steps": args.steps, "height": args.height, "width": args.width,
              "batch": args.batch, "features": args.features, "depth": args.depth,
              "wall_ms_per_step": wall_ms,
              "thread_ms_by_category": dict(categories.most_common()),
              "thread_ms_by_operation": dict(events.most_common(args.top))}
    common.print_json(record)
    return record


if __name__ == "__main__":
    common.run_main(main, huge_pages=True)
