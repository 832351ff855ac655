"""Training objectives."""

import jax
import optax


def soft_dice_loss(logits: jax.Array, masks: jax.Array, smooth: float = 1.0) -> jax.Array:
    """Per-example soft Dice loss from optax: 1 - (I + s) / ((P + T) / 2 + s).

    logits [B, H, W, 1] float32, masks [B, H, W, 1] in {0, 1} -> [B] float32. On a frame without
    a nerve the loss is 1 - s / (P + s), whose gradient s / (P + s)**2 vanishes once the
    predicted area P is much larger than `smooth`: a larger `smooth` (of the order of a nerve's
    area in pixels) keeps pushing false positives down.
    """
    return optax.losses.binary_dice_loss(logits, masks.astype(logits.dtype), smooth=smooth)
