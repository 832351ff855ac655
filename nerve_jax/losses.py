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


def presence_bce_loss(presence_logits: jax.Array, masks: jax.Array) -> jax.Array:
    """Binary cross-entropy of "nerve present" logits [B] against masks [B, H, W, 1] (present =
    any positive pixel) -> [B] float32."""
    present = (masks.reshape(masks.shape[0], -1).max(axis=1) > 0.5).astype(presence_logits.dtype)
    return optax.sigmoid_binary_cross_entropy(presence_logits, present)


def pixel_bce_loss(logits: jax.Array, masks: jax.Array) -> jax.Array:
    """Mean per-pixel binary cross-entropy, logits and masks [B, H, W, 1] -> [B] float32."""
    bce = optax.sigmoid_binary_cross_entropy(logits, masks.astype(logits.dtype))
    return bce.mean(axis=(1, 2, 3))


def total_loss(logits: jax.Array, presence_logits: jax.Array | None, masks: jax.Array, *,
               dice_smooth: float, presence_weight: float = 0.0,
               pixel_bce_weight: float = 0.0) -> jax.Array:
    """Soft Dice + presence_weight x presence BCE (when the model has the head) +
    pixel_bce_weight x pixel BCE, per example: [B] float32."""
    loss = soft_dice_loss(logits, masks, dice_smooth)
    if presence_logits is not None and presence_weight:
        loss = loss + presence_weight * presence_bce_loss(presence_logits, masks)
    if pixel_bce_weight:
        loss = loss + pixel_bce_weight * pixel_bce_loss(logits, masks)
    return loss
