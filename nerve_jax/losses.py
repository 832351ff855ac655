"""Training objectives."""

import jax
import optax


def soft_dice_loss(logits: jax.Array, masks: jax.Array) -> jax.Array:
    """Per-example soft Dice loss from optax.

    logits [B, H, W, 1] float32, masks [B, H, W, 1] in {0, 1} -> [B] float32 (1 - soft Dice,
    smoothed by 1 so that an empty mask predicted empty costs ~0).
    """
    return optax.losses.binary_dice_loss(logits, masks.astype(logits.dtype))
