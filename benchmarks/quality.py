"""Ablation of the pieces beyond the starter UNet, scored like a Kaggle submission.

  .venv/bin/python benchmarks/quality.py [--subjects 20 --frames 60 --test 400 --steps 1000
      --seeds 2 --config configs/quickstart.py --image-size 64,80 --out runs/quality]
  .venv/bin/python benchmarks/quality.py --kaggle-dir DATA [--outer-folds 5 ...]

Synthetic (default): writes (once, reused on later runs) a seeded synthetic Kaggle folder with
contradictory near-duplicates among the training frames, and its TFDS dataset. Each row's
submission is scored on the synthetic test subjects, never seen in training, against their true
masks (synthetic_test_masks.csv).

Your own download (--kaggle-dir, folders or zips): Kaggle's test set has no labels, so the
labelled frames are split by subject into --outer-folds outer folds. Outer fold k becomes a
competition of its own: the other subjects' frames are its training data (linked, or unpacked
once from the zips), fold k's images its test set. Every row is trained, tuned and run there as
below; each labelled frame is scored once, by the models that never saw its subject (out of
fold). Tuning is nested: `tune` sees only the held-out predictions of the validation fold inside
the outer fold's training subjects, never the frames it is scored on.

For each row the script trains what the row needs (every training run has the same step
budget, model and batch), runs the system's own `tune` and `predict`, and scores the
submission: the Kaggle Dice at 420x580, empty vs empty = 1.

Every row is trained with --seeds training seeds and its Dice is the mean over them: one seed's
score moves by several hundredths with the seed alone, more than most pieces change it. Rows are
added greedily: each adds one piece to the best system so far and is kept only if it raises the
Dice; the last line is the system with every kept piece. The change column is the paired
change against the system the row builds on, with a 95% interval over the scored images (from
the seed-averaged per-image Dice, so seed noise is only partly in it; compare the per-seed
column). Workdirs and scores are cached in --out, so an interrupted run resumes. The last output
line is one JSON object.
"""

import argparse
import contextlib
import csv
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from nerve_jax import config_util, metrics, postprocess, rle, runtime, train  # noqa: E402  # noqa: E402
from nerve_jax.atomic import atomic_open  # noqa: E402
from nerve_jax.data import kaggle, pipeline, synthetic, tfds_builder  # noqa: E402
from nerve_jax.submit import inference, tune  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class System:
    """What one row scores: training overrides, tuned post-processing, TTA, number of folds."""

    overrides: tuple[str, ...] = ()
    tuned: bool = False
    tta: str = "none"
    folds: int = 1
    config: str = ""  # A config file (repository-relative) other than --config.
    step_scale: int = 1  # x --steps.
    evals: int = 0  # Evaluations (checkpoints to pick the best from) per training; 0: --evals.

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        for name in ("config", "step_scale", "evals"):  # Keys of results cached before these.
            if fields[name] == getattr(System, name):
                del fields[name]
        return json.dumps(fields, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Piece:
    name: str
    add: callable  # System -> System
    against: str = ""  # --choices: the row (a CHOICES name) its change is paired with; "": recipe.


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


# --choices: one change at a time against the CPU recipe (--config at --image-size), for real
# frames, where a greedy row's presence decisions cannot be judged (every frame holds a nerve).
# A row whose config has another batch size trains for as many images, not steps.
def _starter(learning_rate: str):
    return lambda s: System(config="configs/starter.py", overrides=(
        "--config.image_size=96,96", f"--config.learning_rate={learning_rate}"))


# configs/cpu.py as it is (16-frame batches: 1600 steps at --steps 400), then tune.
CPU_RECIPE = "CPU recipe: configs/cpu.py (4x the steps, best of 8 evaluations), tuned"


def _cpu_recipe(system: System) -> System:
    return dataclasses.replace(system, config="configs/cpu.py", step_scale=4, evals=8, tuned=True)


CHOICES = (
    Piece("starter (Keras U-Net, 96x96), Adam 1e-4", _starter("1e-4")),
    Piece("starter, Adam 1e-3", _starter("1e-3")),
    Piece("starter, Adam 1e-5 (published)", _starter("1e-5")),
    Piece("tuned post-processing", lambda s: dataclasses.replace(s, tuned=True)),
    # The recipe's soft_dice+bce adds per-pixel BCE only with a pixel_bce_weight (0 by default).
    Piece("loss + per-pixel BCE (weight 0.5)", _override("--config.pixel_bce_weight=0.5")),
    Piece("loss focal Tversky", _override("--config.loss=examples.focal_tversky:focal_tversky")),
    Piece("augmentation off", _override("--config.augment.enabled=false")),
    Piece("input 128x176", _override("--config.image_size=128,176")),
    Piece("base features 24", _override("--config.model.base_features=24")),
    Piece("learning rate 1e-3", _override("--config.learning_rate=1e-3")),
    Piece("constant learning rate", _override("--config.lr_schedule=constant")),
    Piece("twice the steps", lambda s: dataclasses.replace(s, step_scale=2)),
    Piece("4x the steps", lambda s: dataclasses.replace(s, step_scale=4)),
    Piece(CPU_RECIPE, _cpu_recipe),
    Piece("CPU recipe with base features 24",
          lambda s: _override("--config.model.base_features=24")(_cpu_recipe(s)),
          against=CPU_RECIPE),
    Piece("CPU recipe with focal Tversky loss",
          lambda s: _override("--config.loss=examples.focal_tversky:focal_tversky")(
              _cpu_recipe(s)), against=CPU_RECIPE),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kaggle-dir", default="",
                   help="score on your own Kaggle download (folders or zips) instead: "
                        "out-of-fold Dice over subject-grouped outer folds of its labelled frames")
    p.add_argument("--outer-folds", type=int, default=5,
                   help="with --kaggle-dir: outer folds (each one's subjects are a test set)")
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--test", type=int, default=400, help="test images (separate subjects)")
    p.add_argument("--contrast", type=float, default=synthetic.DEFAULT_NERVE_CONTRAST,
                   help="synthetic nerve_contrast (lower is harder)")
    p.add_argument("--contradictory-rate", type=float, default=0.1)
    p.add_argument("--data-seed", type=int, default=0,
                   help="synthetic data seed; with --kaggle-dir, the outer folds' shuffle")
    p.add_argument("--steps", type=int, default=1000, help="train steps per model")
    p.add_argument("--image-size", default="64,80",
                   help="model input rows,cols (the 64x80 of the classic Kaggle UNet starter)")
    p.add_argument("--seeds", type=int, default=2,
                   help="training seeds per row (config.seed 0..N-1); a row's Dice is their mean")
    p.add_argument("--evals", type=int, default=4, help="validations per training run")
    p.add_argument("--tune-workers", type=int, default=os.cpu_count() or 1,
                   help="processes for `tune` (default: one per core; each starts TensorFlow, "
                        "so on a few frames 1 is quicker)")
    p.add_argument("--config", default=os.path.join(REPO, "configs", "quickstart.py"))
    p.add_argument("--out", default=os.path.join(REPO, "runs", "quality"))
    p.add_argument("--extensions", action="store_true",
                   help="instead of the greedy rows: each examples/ extension on top of the "
                        "plain UNet with tuned post-processing")
    p.add_argument("--choices", action="store_true",
                   help="instead of the greedy rows: the starter and one change at a time "
                        "against the plain recipe (for real frames, which all hold a nerve)")
    p.add_argument("--only", default="",
                   help="with --choices: the rows whose names contain one of these "
                        "comma-separated words (a budget-limited part of the table)")
    return p.parse_args(argv)


class Split(NamedTuple):
    """One division into training and test subjects: a folder in Kaggle layout whose test/
    holds the test frames, its TFDS dataset, and the test frames' true masks {id: RLE}."""

    name: str
    data: str
    tfds_dir: str
    truth: dict[int, str]


@functools.lru_cache(maxsize=4)
def _fingerprint(kaggle_dir: str) -> str:
    return kaggle.fingerprint(kaggle_dir)  # Lists every file: once per run, not per model.


def data_name(args) -> str:
    if args.kaggle_dir:
        return (f"kaggle_{_fingerprint(args.kaggle_dir)}_outer{args.outer_folds}"
                f"_seed{args.data_seed}")
    return (f"s{args.subjects}_f{args.frames}_t{args.test}_c{args.contrast:g}"
            f"_r{args.contradictory_rate:g}_seed{args.data_seed}_gen{synthetic.GENERATOR_VERSION}")


def ensure_data(args) -> list[Split]:
    """The splits the rows are scored on, written and built on the first run."""
    return outer_splits(args) if args.kaggle_dir else [synthetic_split(args)]


def synthetic_split(args) -> Split:
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
    return Split("", data, tfds_dir, true_masks(os.path.join(data, synthetic.TEST_MASKS_FILE)))


# --- A user's own download: subject-grouped outer folds ------------------------------------

OUTER_TRUTH_FILE = "outer_truth.csv"


def outer_splits(args) -> list[Split]:
    """Outer fold k of the labelled frames as its own competition: the other subjects' frames
    in train/, fold k's images in test/ as <id>.tif, their masks in outer_truth.csv. Files are
    linked (a zipped download is unpacked once), never changed."""
    root = os.path.join(args.out, data_name(args))
    splits, download = [], None
    for k in range(args.outer_folds):
        data = os.path.join(root, f"outer{k}", "data")
        if not os.path.isfile(os.path.join(data, OUTER_TRUTH_FILE)):
            download = download or kaggle.check_download(args.kaggle_dir, with_test=False)
            write_outer_fold(download, args.outer_folds, k, args.data_seed, data,
                             os.path.join(root, "frames"))
        tfds_dir = os.path.join(root, f"outer{k}", "tfds")
        tfds_builder.prepare(data, tfds_dir)
        splits.append(Split(f"outer{k}", data, tfds_dir,
                            true_masks(os.path.join(data, OUTER_TRUTH_FILE))))
    return splits


def write_outer_fold(download: kaggle.Download, num_folds: int, fold: int, seed: int,
                     data: str, unpacked: str) -> None:
    subjects = sorted({p.subject for p in download.pairs})
    _, held = pipeline.split_subjects(subjects, num_folds, fold, seed)
    held = set(held)
    partial = data + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(os.path.join(partial, "train"))
    os.makedirs(os.path.join(partial, "test"))
    rows = []
    for pair in download.pairs:
        image = _local_file(pair.image_path, unpacked)
        if pair.subject in held:
            test_id = len(rows) + 1
            os.symlink(image, os.path.join(partial, "test", f"{test_id}.tif"))
            mask = kaggle.read_tiff(pair.mask_path)
            rows.append((test_id, pair.subject, pair.frame, rle.encode(mask)))
        else:
            os.symlink(image, os.path.join(partial, "train", f"{pair.name}.tif"))
            os.symlink(_local_file(pair.mask_path, unpacked),
                       os.path.join(partial, "train", f"{pair.name}_mask.tif"))
    with open(os.path.join(partial, OUTER_TRUTH_FILE), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img", "subject", "frame", "pixels"])
        writer.writerows(rows)
    shutil.rmtree(data, ignore_errors=True)
    os.rename(partial, data)


def _local_file(ref: str, unpacked: str) -> str:
    """An absolute path holding the file `ref`: the file itself, or its copy unpacked from
    a zip into `unpacked` (once)."""
    if kaggle.ZIP_MEMBER_SEPARATOR not in ref:
        return os.path.abspath(ref)
    path = os.path.join(unpacked, os.path.basename(ref.split(kaggle.ZIP_MEMBER_SEPARATOR)[1]))
    if not os.path.isfile(path):
        os.makedirs(unpacked, exist_ok=True)
        with atomic_open(path, "wb") as f:
            f.write(kaggle.read_bytes(ref))
    return os.path.abspath(path)


# --- Training and scoring -------------------------------------------------------------------

def run_dir(args) -> str:
    """Where the rows of this recipe are cached: named by --config, --image-size, --steps and
    what --config holds, so that a changed config or default never reuses another's models."""
    config = os.path.splitext(os.path.basename(args.config))[0]
    size = args.image_size.replace(",", "x")
    return os.path.join(args.out, data_name(args),
                        f"{config}_{size}_steps{args.steps}_{recipe_fingerprint(args)}")


def recipe_fingerprint(args) -> str:
    config = config_util.load_config_file(args.config)
    config_util.apply_overrides(config, [f"--config.image_size={args.image_size}"])
    return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:8]


def base_config(args, split: Split, system: System = System()):
    """--config (or the system's own config file) at --image-size, trained on as many images
    as --steps of --config's batch (x the system's step_scale), then the system's overrides."""
    config = config_util.load_config_file(args.config)
    images = args.steps * system.step_scale * config.batch_size
    if system.config:
        config = config_util.load_config_file(os.path.join(REPO, system.config))
    config_util.apply_overrides(config, [f"--config.image_size={args.image_size}"])
    config.kaggle_dir, config.tfds_data_dir = split.data, split.tfds_dir
    config_util.apply_overrides(config, list(system.overrides))
    config.num_train_steps = max(1, round(images / config.batch_size))
    config.eval_every_steps = max(1, config.num_train_steps // (system.evals or args.evals))
    config.log_every_steps = config.eval_every_steps
    return config


def workdir_name(system: System) -> str:
    parts = [o.removeprefix("--config.").replace("=", "_") for o in system.overrides]
    if system.config:
        parts.insert(0, os.path.splitext(os.path.basename(system.config))[0])
    if system.step_scale != 1:
        parts.append(f"steps_x{system.step_scale}")
    if system.evals:
        parts.append(f"evals{system.evals}")
    return "-".join(parts) or "plain"


def train_workdir(args, split: Split, system: System, seed: int, fold: int,
                  timings: dict) -> str:
    """The workdir of one training run, trained (or resumed) to its steps."""
    workdir = os.path.join(run_dir(args), workdir_name(system), split.name, f"seed{seed}",
                           f"fold{fold}")
    config = base_config(args, split, system)
    config_util.apply_overrides(config, [f"--config.seed={seed}", f"--config.fold={fold}"])
    done = os.path.join(workdir, "trained_seconds.json")
    if not os.path.isfile(done):
        start = time.perf_counter()
        train.train_and_evaluate(config, workdir)
        with atomic_open(done) as f:
            json.dump({"seconds": time.perf_counter() - start}, f)
    with open(done) as f:
        timings[workdir] = json.load(f)["seconds"]
    return workdir


def true_masks(path: str) -> dict[int, str]:
    with open(path, newline="") as f:
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


def score_models(split: Split, system: System, workdirs: list[str],
                 tune_workers: int) -> np.ndarray:
    """Tunes (if the system does) and predicts with `workdirs` like a user would; per test
    image Dice."""
    for workdir in workdirs:  # A row without tuning predicts with the config's values.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(workdir, postprocess.POSTPROCESS_FILE))
    if system.tuned:
        for workdir in workdirs:
            inference.write_heldout_predictions(workdir, system.tta)
        tune.tune(workdirs, workers=tune_workers)
    digest = hashlib.sha1(system.key().encode()).hexdigest()[:10]
    out = os.path.join(os.path.dirname(workdirs[0]), f"submission_{digest}.csv")
    inference.predict(workdirs, out, os.path.join(split.data, "test"), system.tta)
    return score_submission(out, split.truth)


def run_system(args, splits: list[Split], system: System) -> dict:
    """Every seed's models for `system` on every split, each scored on its test images; Dice
    per image (splits in order) averaged over the seeds."""
    timings, per_seed, params = {}, [], []
    start = time.perf_counter()
    for seed in range(args.seeds):
        scores = []
        for split in splits:
            workdirs = [train_workdir(args, split, system, seed, fold, timings)
                        for fold in range(system.folds)]
            scores.append(score_models(split, system, workdirs, args.tune_workers))
            params.append(postprocess.load(workdirs[0])[0].describe() if system.tuned
                          else "config")
        per_seed.append(np.concatenate(scores))
    models = args.seeds * len(splits) * system.folds
    return {"dice": np.mean(per_seed, axis=0).tolist(),
            "seed_dice": [float(d.mean()) for d in per_seed],
            "train_seconds": sum(timings.values()) / models,
            "seconds": time.perf_counter() - start, "postprocess": params}


def cached(args, splits: list[Split], system: System, results: dict, path: str) -> dict:
    """The system's row from `results`, or run (its trained models reused) when it is missing
    or was scored with another number of seeds."""
    if len(results.get(system.key(), {}).get("seed_dice", ())) != args.seeds:
        results[system.key()] = run_system(args, splits, system)
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


def describe(args, splits: list[Split]) -> str:
    images = sum(len(split.truth) for split in splits)
    what = (f"{images} synthetic test images from separate subjects" if not args.kaggle_dir else
            f"out of fold: {images} labelled frames of {args.kaggle_dir}, each scored by the "
            f"models of the outer fold that held out its subject ({args.outer_folds} "
            f"subject-grouped outer folds)")
    return (f"{what}; Kaggle Dice at 420x580, mean of {args.seeds} training seeds; "
            f"{args.steps} train steps per model; {os.path.basename(args.config)} at "
            f"{args.image_size}")


def main(argv=None):
    args = parse_args(argv)
    runtime.start_tensorflow()
    start = time.perf_counter()
    splits = ensure_data(args)
    data_seconds = time.perf_counter() - start
    path = os.path.join(run_dir(args), RESULTS_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    results = {}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    empty = {"dice": [1.0 if not split.truth[i] else 0.0
                      for split in splits for i in sorted(split.truth)]}
    print(f"\n{describe(args, splits)}")
    print(f"{'row':40s} {'Dice':>7s} {'change (95%)':>18s} {'kept':>5s} {'train s':>8s}   "
          f"per seed")
    print(format_row("all-empty baseline", empty), flush=True)
    record = {"data": data_name(args), "kaggle_dir": args.kaggle_dir, "steps": args.steps,
              "seeds": args.seeds, "image_size": args.image_size,
              "images": len(empty["dice"]), "data_seconds": data_seconds}
    if args.extensions:
        record["extension_rows"] = extension_rows(args, splits, results, path)
    elif args.choices:
        record["choice_rows"] = choice_rows(args, splits, results, path)
    else:
        record.update(greedy_rows(args, splits, results, path, empty))
    record["seconds"] = time.perf_counter() - start
    common.print_json(record)


def greedy_rows(args, splits: list[Split], results: dict, path: str, empty: dict) -> dict:
    """Each of PIECES added to the best system so far, kept when it raises the Dice."""
    kept = System()
    best = cached(args, splits, kept, results, path)
    print(format_row("plain UNet (soft Dice only)", best), flush=True)
    rows = [{"row": "all-empty", "dice": float(np.mean(empty["dice"]))},
            {"row": "plain", "dice": float(np.mean(best["dice"])),
             "seed_dice": best["seed_dice"], "train_seconds": best["train_seconds"]}]
    for piece in PIECES:
        system = piece.add(kept)
        result = cached(args, splits, system, results, path)
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
    return {"rows": rows, "full_system": dataclasses.asdict(kept),
            "full_system_dice": float(np.mean(best["dice"]))}


def extension_rows(args, splits: list[Split], results: dict, path: str) -> list[dict]:
    """Each of EXTENSIONS on top of the plain UNet with tuned post-processing, not greedy."""
    base_system = System(tuned=True)
    base = cached(args, splits, base_system, results, path)
    print(format_row("plain UNet + tuned post-processing", base), flush=True)
    rows = [{"row": "plain + tuned", "dice": float(np.mean(base["dice"])),
             "seed_dice": base["seed_dice"], "train_seconds": base["train_seconds"]}]
    for piece in EXTENSIONS:
        result = cached(args, splits, piece.add(base_system), results, path)
        change = paired_change(result["dice"], base["dice"])
        print(format_row("+ " + piece.name, result, change), flush=True)
        rows.append({"row": piece.name, "dice": float(np.mean(result["dice"])),
                     "seed_dice": result["seed_dice"], "change": change[0], "ci95": change[1],
                     "train_seconds": result["train_seconds"]})
    return rows


def choice_rows(args, splits: list[Split], results: dict, path: str) -> list[dict]:
    """The plain recipe, then each of CHOICES (or those --only names) with its paired change
    against it; not greedy."""
    base_system = System()
    base = cached(args, splits, base_system, results, path)
    print(format_row("recipe: " + os.path.basename(args.config), base), flush=True)
    rows = [{"row": "recipe", "dice": float(np.mean(base["dice"])),
             "seed_dice": base["seed_dice"], "train_seconds": base["train_seconds"]}]
    wanted = [w for w in args.only.split(",") if w]
    by_name = {piece.name: piece for piece in CHOICES}
    for piece in CHOICES:
        if wanted and not any(w in piece.name for w in wanted):
            continue
        result = cached(args, splits, piece.add(base_system), results, path)
        against = (cached(args, splits, by_name[piece.against].add(base_system), results, path)
                   if piece.against else base)
        change = paired_change(result["dice"], against["dice"])
        name = f"{piece.name} (change against: {piece.against})" if piece.against else piece.name
        print(format_row(name, result, change), flush=True)
        rows.append({"row": piece.name, "dice": float(np.mean(result["dice"])),
                     "seed_dice": result["seed_dice"], "change": change[0], "ci95": change[1],
                     "against": piece.against or "recipe",
                     "train_seconds": result["train_seconds"],
                     "postprocess": result["postprocess"]})
    return rows


if __name__ == "__main__":
    common.run_main(main)
