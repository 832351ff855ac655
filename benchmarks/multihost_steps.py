"""Training steps per second of `nerve-jax train` on 2 CPU processes (jax.distributed, a local
coordinator, gloo), as tests/test_multiprocess.py launches them: what the loop's agreement
between processes costs.

  .venv/bin/python benchmarks/multihost_steps.py [--steps 300 --log-every 50 --repeats 3]

A tiny UNet (configs/test.py: 32x48, depth 2, 4 features; global batch 8, 1 CPU device per
process) on synthetic data, so that the loop, not the step, sets the pace. Steps/s are timed
on process 0's log lines (metrics.jsonl) between the first log step and the last, so start-up
and compilation are left out. Prints one line per run, then one JSON line.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "test.py")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nerve_jax.cli", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def prepare(root: str) -> list[str]:
    """Synthetic data and its TFDS build (once); the train flags that read them."""
    data, tfds = os.path.join(root, "data"), os.path.join(root, "tfds")
    for args in (("synth", "--out", data, "--subjects", "4", "--frames", "6", "--test", "4"),
                 ("build", "--kaggle-dir", data, "--tfds-data-dir", tfds)):
        subprocess.run(_cli(*args), env=_env(), cwd=REPO, check=True, capture_output=True)
    return [f"--config.kaggle_dir={data}", f"--config.tfds_data_dir={tfds}"]


def run_once(root: str, data_flags: list[str], steps: int, log_every: int, run: int,
             norm: str) -> dict:
    """One 2-process training; steps/s between process 0's first and last log lines."""
    workdir = os.path.join(root, f"work{run}")
    train = ["train", "--config", CONFIG, "--workdir", workdir, *data_flags,
             f"--config.model.norm={norm}",
             f"--config.num_train_steps={steps}", f"--config.log_every_steps={log_every}",
             f"--config.eval_every_steps={10 * steps}", "--config.checkpoint_every_minutes=0"]
    port = _free_port()
    procs = [subprocess.Popen(_cli(*train, "--coordinator", f"localhost:{port}",
                                   "--num-processes", "2", "--process-id", str(i)),
                              env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    seen = _watch_log(os.path.join(workdir, "metrics.jsonl"), procs)
    for i, p in enumerate(procs):
        out, _ = p.communicate(timeout=600)
        if p.returncode:
            raise SystemExit(f"process {i} exited {p.returncode}:\n{out[-3000:]}")
    (first, t0), (last, t1) = seen[0], seen[-1]
    return {"run": run, "timed_steps": last - first, "seconds": t1 - t0,
            "steps_per_s": (last - first) / (t1 - t0)}


def _watch_log(path: str, procs: list) -> list[tuple[int, float]]:
    """(step, arrival time) of every training log line process 0 writes, until all exit."""
    seen, done = [], 0
    while True:
        finished = all(p.poll() is not None for p in procs)
        if os.path.exists(path):
            with open(path) as f:
                lines = f.read().splitlines()
            now = time.perf_counter()
            for line in lines[done:]:
                record = json.loads(line)
                if "train_loss" in record:
                    seen.append((record["step"], now))
            done = len(lines)
        if finished:
            return seen
        time.sleep(0.005)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--log-every", type=int, default=50, help="config.log_every_steps")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--norm", default="batch", choices=("batch", "none"),
                   help="config.model.norm: 'none' drops the BatchNorm all-reduces from the "
                        "step, leaving the loop a larger share")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        data_flags = prepare(root)
        runs = []
        for run in range(args.repeats):
            runs.append(run_once(root, data_flags, args.steps, args.log_every, run, args.norm))
            print(f"run {run}: {runs[-1]['timed_steps']} steps in {runs[-1]['seconds']:.2f} s: "
                  f"{runs[-1]['steps_per_s']:.1f} steps/s", flush=True)
    common.print_json({"processes": 2, "steps": args.steps, "log_every_steps": args.log_every,
                       "norm": args.norm,
                       "median_steps_per_s": common.median([r["steps_per_s"] for r in runs]),
                       "runs": runs})


if __name__ == "__main__":
    main()
