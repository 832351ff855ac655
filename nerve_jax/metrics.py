"""The Kaggle metric (per-image Dice at full resolution, empty vs empty = 1) and the metrics
that config.metrics adds to evaluation."""

import jax
import jax.numpy as jnp

from nerve_jax import registry


def dice_per_image(pred: jax.Array, truth: jax.Array) -> jax.Array:
    """Kaggle Dice of each image. pred, truth: [B, H, W] bool -> [B] float32.

    2|X ∩ Y| / (|X| + |Y|), and 1 when both are empty.
    """
    axes = tuple(range(1, pred.ndim))
    pred, truth = pred.astype(bool), truth.astype(bool)
    intersection = jnp.sum(pred & truth, axis=axes, dtype=jnp.float32)
    total = (jnp.sum(pred, axis=axes, dtype=jnp.float32)
             + jnp.sum(truth, axis=axes, dtype=jnp.float32))
    return jnp.where(total == 0, 1.0, 2.0 * intersection / jnp.maximum(total, 1.0))


def empty_baseline_per_image(truth: jax.Array) -> jax.Array:
    """Score of predicting every mask empty: 1 where the truth is empty, else 0. [B, ...] -> [B]."""
    axes = tuple(range(1, truth.ndim))
    return jnp.logical_not(jnp.any(truth.astype(bool), axis=axes)).astype(jnp.float32)


# --- Metrics chosen by config.metrics ------------------------------------------------------
# Contract: fn(predictions, batch) -> [B] float32, one value per frame, where predictions holds
# "masks" [B, 420, 580] bool (the masks being scored), "probs" [B, 420, 580] float32, "presence"
# [B] float32 and "logits" [B, h, w] float32, and batch holds "image" [B, h, w, 1] float32 and
# "mask_full" [B, 420, 580] bool. Evaluation averages it over the validation frames of every
# device and host and reports it as "val_<name>".

# Names the evaluator always reports (val_dice, val_empty_dice, val_frames); config.metrics may not
# take them.
BUILT_IN = ("dice", "empty_dice", "frames", "count")

METRICS = {
    "iou": "nerve_jax.metrics:iou",
    "presence_accuracy": "nerve_jax.metrics:presence_accuracy",
}


def iou(predictions: dict, batch: dict) -> jax.Array:
    """Intersection over union of each frame's mask, 1 when both are empty."""
    pred, truth = predictions["masks"].astype(bool), batch["mask_full"].astype(bool)
    axes = tuple(range(1, pred.ndim))
    intersection = jnp.sum(pred & truth, axis=axes, dtype=jnp.float32)
    union = jnp.sum(pred | truth, axis=axes, dtype=jnp.float32)
    return jnp.where(union == 0, 1.0, intersection / jnp.maximum(union, 1.0))


def presence_accuracy(predictions: dict, batch: dict) -> jax.Array:
    """1 where the predicted mask is empty exactly when the true one is: the decision that an
    empty frame's score of 0 or 1 hangs on."""
    axes = tuple(range(1, predictions["masks"].ndim))
    return (jnp.any(predictions["masks"], axis=axes)
            == jnp.any(batch["mask_full"], axis=axes)).astype(jnp.float32)


def from_config(config) -> dict:
    """{name: fn} of config.metrics (registered names or "package.module:function")."""
    return {registry.display_name(name): registry.resolve(name, METRICS, "config.metrics")
            for name in config.metrics}
