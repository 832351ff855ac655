"""The Kaggle metric: per-image Dice at full resolution, where empty vs empty scores 1."""

import jax
import jax.numpy as jnp


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
