"""Restoring a trained model, evaluating it on the validation subjects, predicting test images."""

import json
import os

import jax
import matplotlib
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from nerve_jax import checkpoint, metrics, parallel, postprocess, rle, submission, train
from nerve_jax.atomic import atomic_open
from nerve_jax.data import kaggle, pipeline
from nerve_jax.errors import UserError

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

EVAL_FILE = "eval.json"
OVERLAY_FILE = "overlay_val.png"


def restore_best(workdir: str) -> tuple[ml_collections.ConfigDict, train.TrainState, int]:
    """(config, replicated state, step) of the checkpoint with the best validation Dice."""
    config = train.load_config(workdir)
    mesh = parallel.make_mesh()
    state = parallel.replicate(train.create_train_state(config, jax.random.key(0)), mesh)
    mngr = checkpoint.manager(workdir, read_only=True)
    step = mngr.best_step() or mngr.latest_step()
    if step is None:
        raise UserError(f"{workdir}: no checkpoint found; run `nerve-jax train` first")
    return config, checkpoint.restore(mngr, step, state), step


def mask_predictor(config: ml_collections.ConfigDict, mesh):
    """fn(state, batch) -> (full-resolution masks [b, 420, 580] bool, ids [b]) on all devices."""
    def predict(state, batch):
        predictions = train.predict_step(state, batch)
        masks = postprocess.masks_from_probabilities(
            predictions["probs"], config.threshold, config.min_mask_area,
            predictions["presence"], config.get("presence_threshold", 0.5))
        return masks, batch["id"]

    return parallel.parallelize(predict, config.parallel, mesh, out_batched=True)


def _gather(x: jax.Array) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def evaluate(workdir: str) -> dict:
    """Kaggle Dice at full resolution on the validation subjects, next to the all-empty
    baseline; written to workdir/eval.json with an overlay PNG of some frames."""
    pipeline.hide_accelerators_from_tf()
    config, state, step = restore_best(workdir)
    builder = train.prepare_data(config, workdir)
    frames = pipeline.frames_per_subject(builder)
    _, val_subjects = pipeline.split_subjects(list(frames), config.num_folds, config.fold,
                                              config.split_seed)
    _, evaluate_step, _ = train.compiled_steps(config, parallel.make_mesh())
    result = train.evaluate_subjects(evaluate_step, state, builder, config, val_subjects)
    result.update(step=int(step), val_subjects=val_subjects,
                  data=os.path.abspath(config.kaggle_dir),
                  metric="Kaggle Dice, per image at 420x580, empty vs empty = 1")
    if jax.process_index() == 0:
        with atomic_open(os.path.join(workdir, EVAL_FILE)) as f:
            json.dump(result, f, indent=2)
        result["overlay"] = save_overlay(config, state, val_subjects,
                                         os.path.join(workdir, OVERLAY_FILE))
    return result


def _overlay_frames(kaggle_dir: str, subjects: list[int], count: int) -> list[kaggle.TrainPair]:
    """Up to `count` validation frames, half with a nerve and half without where possible."""
    pairs, _ = kaggle.pair_train_files(kaggle.locate(kaggle_dir, "train"))
    pairs = [p for p in pairs if p.subject in set(subjects)]
    has_nerve = [kaggle.read_tiff(p.mask_path).any() for p in pairs]
    with_nerve = [p for p, h in zip(pairs, has_nerve, strict=True) if h]
    without = [p for p, h in zip(pairs, has_nerve, strict=True) if not h]
    rng = np.random.default_rng(0)
    half = count // 2
    chosen = [with_nerve[i] for i in rng.permutation(len(with_nerve))[:half]]
    chosen += [without[i] for i in rng.permutation(len(without))[: count - len(chosen)]]
    return chosen


def save_overlay(config, state, subjects: list[int], path: str, count: int = 8) -> str:
    """PNG of validation frames: truth outline green, prediction outline red, with Dice."""
    pairs = _overlay_frames(config.kaggle_dir, subjects, count)
    images = np.stack([kaggle.read_tiff(p.image_path) for p in pairs])
    truths = np.stack([kaggle.read_tiff(p.mask_path) > 0 for p in pairs])
    resized = pipeline.resize_image(images[..., None], tuple(config.image_size)).numpy()
    predict = jax.jit(train.predict_step)
    predictions = predict(jax.device_get(state), {"image": resized})
    preds = postprocess.masks_from_probabilities(
        predictions["probs"], config.threshold, config.min_mask_area,
        predictions["presence"], config.get("presence_threshold", 0.5))
    dices = np.asarray(metrics.dice_per_image(preds, truths))
    preds = np.asarray(preds)
    fig, axes = plt.subplots(2, (len(pairs) + 1) // 2, figsize=(4 * ((len(pairs) + 1) // 2), 6.4))
    for ax, pair, image, truth, pred, dice in zip(axes.flat, pairs, images, truths, preds,
                                                  dices, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        if truth.any():
            ax.contour(truth, levels=[0.5], colors="lime", linewidths=1.2)
        if pred.any():
            ax.contour(pred, levels=[0.5], colors="red", linewidths=1.2)
        ax.set_title(f"{pair.name}  Dice {dice:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle("validation: truth (green) vs prediction (red)")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
    return path


def predict(workdir: str, out_path: str, test_dir: str | None = None) -> dict:
    """Predicts every test image at full resolution and writes the Kaggle submission CSV."""
    pipeline.hide_accelerators_from_tf()
    config, state, step = restore_best(workdir)
    test_dir = test_dir or kaggle.locate(config.kaggle_dir, "test") or os.path.join(
        config.kaggle_dir, "test")
    images = kaggle.scan_test(test_dir)
    predict_masks = mask_predictor(config, parallel.make_mesh())
    rles = {}
    for batch in pipeline.test_batches(images, config.image_size, config.eval_batch_size):
        masks, ids = (_gather(x) for x in predict_masks(state, batch))
        for image_id, mask in zip(ids, masks, strict=True):
            if image_id >= 0:
                rles[int(image_id)] = rle.encode(mask)
    if jax.process_index() == 0:
        submission.write(out_path, list(rles), list(rles.values()))
    return {"submission": os.path.abspath(out_path), "images": len(rles), "step": int(step),
            "non_empty": sum(bool(r) for r in rles.values())}
