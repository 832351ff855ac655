"""Ablation of the pieces beyond the starter UNet, scored like a Kaggle submission.

  .venv/bin/python benchmarks/quality.py [--subjects 20 --frames 60 --test 400 --steps 1000
      --seeds 2 --config configs/quickstart.py --image-size 64,80 --out runs/quality]

Writes (once, reused on later runs) a seeded synthetic Kaggle folder with contradictory
near-duplicates among the training frames, and its TFDS dataset. Then, for each row, trains
what the row needs (every training run has the same step budget, model and batch), runs the
system's own `tune` and `predict` on it, and scores the submission on the synthetic test
subjects, never seen in training, against their true masks (synthetic_test_masks.csv): the
Kaggle Dice at 420x580, empty vs empty = 1.

Every row is trained with --seeds training seeds and its Dice is the mean over them: one seed's
score moves by several hundredths with the seed alone, more than most pieces change it. Rows are
added greedily: each adds one piece to the best system so far and is kept only if it raises the
test Dice; the last line is the system with every kept piece. The change column is the paired
change against the system the row builds on, with a 95% interval over test images (from the
seed-averaged per-image Dice, so seed noise is only partly in it; compare the per-seed column).
Workdirs and scores are cached in --out, so an interrupted run resumes. The last output line is
one JSON object.
"""

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from nerve_jax import config_util, metrics, runtime, train  # noqa: E402
from nerve_jax.atomic import atomic_open  # noqa: E402
from nerve_jax.data import kaggle, synthetic, tfds_builder  # noqa: E402
from nerve_jax.submit import inference, postprocess, rle, tune  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class System:
    """What one row scores: training overrides, tuned post-processing, TTA, number of folds."""

    overrides: tuple[str, ...] = ()
    tuned: bool = False
    tta: str = "none"
    folds: int = 1

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Piece:
    name: str
    add: callable  # System -> System


def _override(*overrides: str):
    return lambda s: dataclasses.replace(s, overrides=(*s.overrides, *overrides))


PIECES = (
    # First: the presence head's threshold and every later model's are then tuned, not guessed.
    Piece("tuned post-processing", lambda s: dataclasses.replace(s, tuned=True)),
    Piece("presence head (+ presence BCE)", _override("--config.model.presence_head=true")),
    # Without left-right flips: real nerves sit right of centre (configs/default.py).
    Piece("augmentation (config.augment, no flip)",
          _override("--config.augment.enabled=true", "--config.augment.flip=0.0")),
    Piece("clean=drop (contradictory pairs)", _override("--config.clean=drop")),
    Piece("hflip TTA", lambda s: dataclasses.replace(s, tta="hflip")),
    Piece("2-fold ensemble", lambda s: dataclasses.replace(s, folds=2)),
)


# The worked extensions of examples/ (docs/extending.md), with their default arguments.
EXTENSIONS = (
    Piece("focal Tversky loss", _override("--config.loss=examples.focal_tversky:focal_tversky")),
    Piece("GroupNorm residual UNet",
          _override("--config.model.name=examples.gn_resunet:GroupNormResUNet")),
    Piece("CutMix on the device", _override("--config.batch_transform=examples.cutmix:cutmix")),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--test", type=int, default=400, help="test images (separate subjects)")
    p.add_argument("--contrast", type=float, default=synthetic.DEFAULT_NERVE_CONTRAST,
                   help="synthetic nerve_contrast (lower is harder)")
    p.add_argument("--contradictory-rate", type=float, default=0.1)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1000, help="train steps per model")
    p.add_argument("--image-size", default="64,80",
                   help="model input rows,cols (the 64x80 of the classic Kaggle UNet starter)")
    p.add_argument("--seeds", type=int, default=2,
                   help="training seeds per row (config.seed 0..N-1); a row's Dice is their mean")
    p.add_argument("--evals", type=int, default=4, help="validations per training run")
    p.add_argument("--config", default=os.path.join(REPO, "configs", "quickstart.py"))
    p.add_argument("--out", default=os.path.join(REPO, "runs", "quality"))
    p.add_argument("--extensions", action="store_true",
                   help="instead of the greedy rows: each examples/ extension on top of the "
                        "plain UNet with tuned post-processing")
    return p.parse_args(argv)


def data_name(args) -> str:
    return (f"s{args.subjects}_f{args.frames}_t{args.test}_c{args.contrast:g}"
            f"_r{args.contradictory_rate:g}_seed{args.data_seed}")


def ensure_data(args) -> tuple[str, str]:
    """(kaggle folder, TFDS data dir), generated and built on the first run."""
    root = os.path.join(args.out, data_name(args))
    data, tfds_dir = os.path.join(root, "data"), os.path.join(root, "tfds")
    if not os.path.isfile(os.path.join(data, synthetic.TRUTH_FILE)):
        shutil.rmtree(data, ignore_errors=True)
        summary = synthetic.generate(data, num_subjects=args.subjects,
                                     frames_per_subject=args.frames, num_test=args.test,
                                     seed=args.data_seed, nerve_contrast=args.contrast,
                                     contradictory_rate=args.contradictory_rate,
                                     workers=os.cpu_count() or 1)
        print(f"synthetic data: {summary}", flush=True)
    tfds_builder.prepare(data, tfds_dir)
    return data, tfds_dir


def run_dir(args) -> str:
    config = os.path.splitext(os.path.basename(args.config))[0]
    size = args.image_size.replace(",", "x")
    return os.path.join(args.out, data_name(args), f"{config}_{size}_steps{args.steps}")


def base_config(args, data: str, tfds_dir: str):
    config = config_util.load_config_file(args.config)
    config_util.apply_overrides(config, [f"--config.image_size={args.image_size}"])
    config.kaggle_dir, config.tfds_data_dir = data, tfds_dir
    config.num_train_steps = args.steps
    config.eval_every_steps = max(1, args.steps // args.evals)
    config.log_every_steps = config.eval_every_steps
    return config


def train_workdir(args, data: str, tfds_dir: str, overrides: tuple[str, ...], seed: int,
                  fold: int, timings: dict) -> str:
    """The workdir of one training run, trained (or resumed) to --steps."""
    name = "-".join(o.removeprefix("--config.").replace("=", "_") for o in overrides) or "plain"
    workdir = os.path.join(run_dir(args), name, f"seed{seed}", f"fold{fold}")
    config = base_config(args, data, tfds_dir)
    config_util.apply_overrides(config, [*overrides, f"--config.seed={seed}",
                                         f"--config.fold={fold}"])
    done = os.path.join(workdir, "trained_seconds.json")
    if not os.path.isfile(done):
        start = time.perf_counter()
        train.train_and_evaluate(config, workdir)
        with atomic_open(done) as f:
            json.dump({"seconds": time.perf_counter() - start}, f)
    with open(done) as f:
        timings[workdir] = json.load(f)["seconds"]
    return workdir


def true_masks(data: str) -> dict[int, str]:
    with open(os.path.join(data, synthetic.TEST_MASKS_FILE), newline="") as f:
        return {int(row["img"]): row["pixels"] for row in csv.DictReader(f)}


def score_submission(path: str, truth: dict[int, str]) -> np.ndarray:
    """Per test image, the Kaggle Dice of the submission at `path` (ids sorted)."""
    with open(path, newline="") as f:
        predicted = {int(row["img"]): row["pixels"] for row in csv.DictReader(f)}
    shape = (kaggle.HEIGHT, kaggle.WIDTH)
    ids = sorted(truth)
    preds = np.stack([rle.decode(predicted[i], shape) for i in ids])
    truths = np.stack([rle.decode(truth[i], shape) for i in ids])
    return np.asarray(metrics.dice_per_image(preds, truths))


def score_models(data: str, system: System, workdirs: list[str],
                 truth: dict[int, str]) -> np.ndarray:
    """Tunes (if the system does) and predicts with `workdirs` like a user would; per test
    image Dice."""
    for workdir in workdirs:  # A row without tuning predicts with the config's values.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(workdir, postprocess.POSTPROCESS_FILE))
    if system.tuned:
        for workdir in workdirs:
            inference.write_heldout_predictions(workdir, system.tta)
        tune.tune(workdirs, workers=os.cpu_count() or 1)
    digest = hashlib.sha1(system.key().encode()).hexdigest()[:10]
    out = os.path.join(os.path.dirname(workdirs[0]), f"submission_{digest}.csv")
    inference.predict(workdirs, out, os.path.join(data, "test"), system.tta)
    return score_submission(out, truth)


def run_system(args, data: str, tfds_dir: str, system: System, truth: dict[int, str]) -> dict:
    """Every seed's models for `system`, each scored on the test images; Dice per image
    averaged over the seeds."""
    timings, per_seed, params = {}, [], []
    for seed in range(args.seeds):
        workdirs = [train_workdir(args, data, tfds_dir, system.overrides, seed, fold, timings)
                    for fold in range(system.folds)]
        per_seed.append(score_models(data, system, workdirs, truth))
        params.append(postprocess.load(workdirs[0])[0].describe() if system.tuned else "config")
    return {"dice": np.mean(per_seed, axis=0).tolist(),
            "seed_dice": [float(d.mean()) for d in per_seed],
            "train_seconds": sum(timings.values()) / args.seeds, "postprocess": params}


def cached(args, data, tfds_dir, system: System, truth, results: dict, path: str) -> dict:
    if system.key() not in results:
        results[system.key()] = run_system(args, data, tfds_dir, system, truth)
        with atomic_open(path) as f:  # An interrupted run keeps the rows it finished.
            json.dump(results, f)
    return results[system.key()]


def paired_change(new: list[float], old: list[float]) -> tuple[float, float]:
    """Mean of new - old and the half-width of its normal 95% interval."""
    diff = np.asarray(new) - np.asarray(old)
    return float(diff.mean()), float(1.96 * diff.std(ddof=1) / np.sqrt(diff.size))


def format_row(name: str, result: dict, change: tuple[float, float] | None = None,
               kept: bool | None = None) -> str:
    seeds = " ".join(f"{d:.4f}" for d in result.get("seed_dice", []))
    change_text = f"{change[0]:+8.4f} ± {change[1]:.4f}" if change else ""
    kept_text = "" if kept is None else "yes" if kept else "no"
    train_s = f"{result['train_seconds']:8.0f}" if "train_seconds" in result else ""
    return (f"{name:40s} {np.mean(result['dice']):7.4f} {change_text:>18s} {kept_text:>5s} "
            f"{train_s:>8s}   {seeds}")


def main(argv=None):
    args = parse_args(argv)
    runtime.start_tensorflow()
    data, tfds_dir = ensure_data(args)
    truth = true_masks(data)
    path = os.path.join(run_dir(args), RESULTS_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    results = {}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    empty = {"dice": [1.0 if not pixels else 0.0 for _, pixels in sorted(truth.items())]}
    print(f"\n{len(truth)} synthetic test images from separate subjects; Kaggle Dice at "
          f"420x580, mean of {args.seeds} training seeds; {args.steps} train steps per model; "
          f"{os.path.basename(args.config)} at {args.image_size}")
    print(f"{'row':40s} {'Dice':>7s} {'change (95%)':>18s} {'kept':>5s} {'train s':>8s}   "
          f"per seed")
    print(format_row("all-empty baseline", empty), flush=True)
    if args.extensions:
        return extension_rows(args, data, tfds_dir, truth, results, path)
    kept = System()
    best = cached(args, data, tfds_dir, kept, truth, results, path)
    print(format_row("plain UNet (soft Dice only)", best), flush=True)
    rows = [{"row": "all-empty", "dice": float(np.mean(empty["dice"]))},
            {"row": "plain", "dice": float(np.mean(best["dice"])),
             "seed_dice": best["seed_dice"], "train_seconds": best["train_seconds"]}]
    for piece in PIECES:
        system = piece.add(kept)
        result = cached(args, data, tfds_dir, system, truth, results, path)
        change = paired_change(result["dice"], best["dice"])
        keep = change[0] > 0
        print(format_row("+ " + piece.name, result, change, keep), flush=True)
        rows.append({"row": piece.name, "dice": float(np.mean(result["dice"])),
                     "seed_dice": result["seed_dice"], "change": change[0], "ci95": change[1],
                     "kept": keep, "train_seconds": result["train_seconds"],
                     "postprocess": result["postprocess"]})
        if keep:
            kept, best = system, result
    print(format_row("full system (kept pieces)", best))
    print(f"  {json.dumps(dataclasses.asdict(kept))}")
    common.print_json({"data": data_name(args), "steps": args.steps, "seeds": args.seeds,
                       "image_size": args.image_size, "rows": rows,
                       "full_system": dataclasses.asdict(kept),
                       "full_system_dice": float(np.mean(best["dice"]))})


def extension_rows(args, data: str, tfds_dir: str, truth: dict, results: dict,
                   path: str) -> None:
    """Each of EXTENSIONS on top of the plain UNet with tuned post-processing, not greedy."""
    base_system = System(tuned=True)
    base = cached(args, data, tfds_dir, base_system, truth, results, path)
    print(format_row("plain UNet + tuned post-processing", base), flush=True)
    rows = [{"row": "plain + tuned", "dice": float(np.mean(base["dice"])),
             "seed_dice": base["seed_dice"], "train_seconds": base["train_seconds"]}]
    for piece in EXTENSIONS:
        result = cached(args, data, tfds_dir, piece.add(base_system), truth, results, path)
        change = paired_change(result["dice"], base["dice"])
        print(format_row("+ " + piece.name, result, change), flush=True)
        rows.append({"row": piece.name, "dice": float(np.mean(result["dice"])),
                     "seed_dice": result["seed_dice"], "change": change[0], "ci95": change[1],
                     "train_seconds": result["train_seconds"]})
    common.print_json({"data": data_name(args), "steps": args.steps, "seeds": args.seeds,
                       "image_size": args.image_size, "extension_rows": rows})


if __name__ == "__main__":
    common.run_main(main)
