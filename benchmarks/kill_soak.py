"""SIGKILL `nerve-jax train` at random moments, resume each time, and check the end result.

  .venv/bin/python benchmarks/kill_soak.py [--kills 20 --seed 0 --steps 200
      --checkpoint-every 10 --out runs/kill_soak]

On the quickstart data (written by `nerve-jax synth` if missing) and configs/quickstart.py at
--steps, with a checkpoint every --checkpoint-every steps: starts the command, kills it after a
random 5-90 s (start-up, training, evaluation and saves alike; the TFDS
dataset is built first), and starts it again, --kills
times; then lets it finish, and trains the same run without interruption. Prints the kills
survived, the resumes that failed (a run that exited by itself with an error: must be 0), the
steps done again per kill (the steps logged before the kill that the resumed run had to redo),
and the largest difference between the final parameters of the two runs. The last line is one
JSON object.
"""

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--data", default=os.path.join(REPO, "runs", "quickstart", "data"))
    p.add_argument("--out", default=os.path.join(REPO, "runs", "kill_soak"))
    return p.parse_args(argv)


def command(args, workdir: str) -> list[str]:
    return [sys.executable, "-m", "nerve_jax.cli", "train", "--config",
            os.path.join(REPO, "configs", "quickstart.py"), "--workdir", workdir,
            f"--config.kaggle_dir={args.data}",
            f"--config.tfds_data_dir={os.path.join(args.out, 'tfds')}",
            f"--config.num_train_steps={args.steps}", "--config.log_every_steps=1",
            f"--config.checkpoint_every_steps={args.checkpoint_every}"]


def steps_logged(workdir: str) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return max((json.loads(line)["step"] for line in f
                    if line.strip().endswith("}") and "train_loss" in line), default=0)


def latest_checkpoint(workdir: str) -> int:
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return 0
    return max((int(name) for name in os.listdir(folder) if name.isdigit()), default=0)


def final_params(workdir: str) -> dict:
    from nerve_jax import checkpoint

    mngr = checkpoint.manager(workdir, read_only=True)
    return mngr.restore(mngr.latest_step())["params"]


def soak(args, workdir: str) -> dict:
    rng = random.Random(args.seed)
    kills, failed, redone = 0, [], []
    for _ in range(args.kills):
        resumed_from = latest_checkpoint(workdir)
        process = subprocess.Popen(command(args, workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        try:
            process.wait(timeout=rng.uniform(5.0, 90.0))
        except subprocess.TimeoutExpired:
            logged = steps_logged(workdir)
            process.send_signal(signal.SIGKILL)
            kills += 1
        _, err = process.communicate()
        if process.returncode == -signal.SIGKILL:  # The next run resumes from the checkpoint.
            redone.append(max(0, logged - max(latest_checkpoint(workdir), resumed_from)))
        if process.returncode not in (0, -signal.SIGKILL):
            failed.append(err[-1000:])
        if process.returncode == 0:
            break
        print(f"kill {kills}: {steps_logged(workdir)} steps logged, checkpoint "
              f"{latest_checkpoint(workdir)}", flush=True)
    final = subprocess.run(command(args, workdir), cwd=REPO, capture_output=True, text=True)
    if final.returncode != 0:
        failed.append(final.stderr[-1000:])
    return {"kills": kills, "failed_resumes": len(failed), "failures": failed,
            "steps_redone": redone}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not os.path.isfile(os.path.join(args.data, "train_masks.csv")):
        subprocess.run([sys.executable, "-m", "nerve_jax.cli", "synth", "--out", args.data,
                        "--subjects", "24", "--frames", "20", "--test", "60"], check=True)
    subprocess.run([sys.executable, "-m", "nerve_jax.cli", "build", "--kaggle-dir", args.data,
                    "--tfds-data-dir", os.path.join(args.out, "tfds")], check=True,
                   capture_output=True)
    shutil.rmtree(os.path.join(args.out, "killed"), ignore_errors=True)
    shutil.rmtree(os.path.join(args.out, "straight"), ignore_errors=True)
    start = time.perf_counter()
    result = soak(args, os.path.join(args.out, "killed"))
    subprocess.run(command(args, os.path.join(args.out, "straight")), cwd=REPO, check=True,
                   capture_output=True)
    killed = final_params(os.path.join(args.out, "killed"))
    straight = final_params(os.path.join(args.out, "straight"))
    import jax

    difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                     for a, b in zip(jax.tree.leaves(killed), jax.tree.leaves(straight),
                                     strict=True))
    redone = result["steps_redone"]
    print(f"kills survived: {result['kills']}; resumes that failed: {result['failed_resumes']}")
    if redone:
        print(f"steps done again per kill: median {statistics.median(redone)}, max {max(redone)} "
              f"(checkpoint every {args.checkpoint_every} steps)")
    print(f"largest parameter difference, killed vs uninterrupted run: {difference:.3g}")
    record = {**result, "steps": args.steps, "checkpoint_every": args.checkpoint_every,
              "max_param_difference": difference,
              "minutes": round((time.perf_counter() - start) / 60, 1)}
    common.print_json(record)
    return record


if __name__ == "__main__":
    common.run_main(main)
