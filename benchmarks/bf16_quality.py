"""bfloat16 against float32: the best validation Dice of the same training run in each dtype.

  .venv/bin/python benchmarks/bf16_quality.py [--seeds 0,1,2 --steps 200 --out runs/bf16]

Synthetic data (12 subjects x 20 frames, seed 5, written once into --out); the quickstart
UNet at 64x80, batch 16, validated on 3-fold fold 0's 4 subjects (80 frames) at 3
evaluations; each (dtype, seed) trains from scratch in its own workdir. The score is the best
checkpoint's validation Dice (per image at model resolution, empty vs empty = 1), the one that
`evaluate`, `tune` and `predict` would use. The last output line is one JSON object.
"""

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from nerve_jax import config_util, runtime  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ("float32", "bfloat16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="training seeds (config.seed)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", default=os.path.join(REPO, "runs", "bf16"))
    return p.parse_args(argv)


def ensure_data(out: str) -> str:
    from nerve_jax.data import synthetic

    data = os.path.join(out, f"data_gen{synthetic.GENERATOR_VERSION}")
    if not os.path.isfile(os.path.join(data, synthetic.TRUTH_FILE)):
        synthetic.generate(data, num_subjects=12, frames_per_subject=20, num_test=2, seed=5)
    return data


def config_for(data: str, out: str, dtype: str, seed: int, steps: int):
    config = config_util.load_config_file(os.path.join(REPO, "configs", "quickstart.py"))
    config.image_size = (64, 80)
    config.num_folds = 3
    config.num_train_steps = steps
    config.eval_every_steps = max(1, steps // 3)
    config.log_every_steps = steps
    config.model.dtype = dtype
    config.seed = seed
    config.kaggle_dir, config.tfds_data_dir = data, os.path.join(out, "tfds")
    return config


def best_dice(data: str, out: str, dtype: str, seed: int, steps: int) -> dict:
    """Trains one run from scratch; its best validation Dice and the all-empty one."""
    from nerve_jax import train

    workdir = os.path.join(out, f"{dtype}_seed{seed}_steps{steps}")
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    result = train.train_and_evaluate(config_for(data, out, dtype, seed, steps), workdir)
    return {"dtype": dtype, "seed": seed, "best_dice": result.best.dice,
            "best_step": result.best.step, "empty_dice": result.val_metrics["val_empty_dice"],
            "seconds": time.perf_counter() - start}


def main(argv=None):
    args = parse_args(argv)
    runtime.start_tensorflow()
    data = ensure_data(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [best_dice(data, args.out, dtype, seed, args.steps)
            for seed in seeds for dtype in DTYPES]
    print(f"\n{'dtype':10s} {'seed':>4s} {'best val Dice':>13s} {'step':>5s} {'train s':>8s}")
    for r in rows:
        print(f"{r['dtype']:10s} {r['seed']:4d} {r['best_dice']:13.4f} {r['best_step']:5d} "
              f"{r['seconds']:8.0f}")
    means = {d: sum(r["best_dice"] for r in rows if r["dtype"] == d) / len(seeds)
             for d in DTYPES}
    print(f"mean over seeds: float32 {means['float32']:.4f}, bfloat16 {means['bfloat16']:.4f}; "
          f"all-empty {rows[0]['empty_dice']:.4f}")
    common.print_json({"steps": args.steps, "rows": rows, "mean": means})


if __name__ == "__main__":
    common.run_main(main)
