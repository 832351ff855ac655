"""Training objectives: pure functions `fn(outputs, batch, **config fields) -> [B] float32`.

`outputs` is the model's dict: "logits" [B, H, W, 1] float32, plus "presence" [B] float32 logits
when the model has that head. `batch` holds "image" and "mask", [B, H, W, 1] float32 (mask in
{0, 1}). `config.loss` picks one by registered name (LOSSES) or as "package.module:function";
`from_config` binds its keyword-only parameters to the config fields of the same name and to
`config.loss_args`, checks the [B] result, and adds `presence_weight` x presence BCE whenever
the model has a presence head.
"""

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax

from nerve_jax import registry

LOSSES = {
    "soft_dice": "nerve_jax.losses:soft_dice",
    "soft_dice+bce": "nerve_jax.losses:soft_dice_bce",
    "batch_dice": "nerve_jax.losses:batch_dice",
}

LossFn = Callable[[dict, dict], jax.Array]


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


def soft_dice(outputs: dict, batch: dict, *, dice_smooth: float = 1.0) -> jax.Array:
    """Soft Dice of the mask logits (`soft_dice_loss` with smooth = config.dice_smooth)."""
    return soft_dice_loss(outputs["logits"], batch["mask"], dice_smooth)


def soft_dice_bce(outputs: dict, batch: dict, *, dice_smooth: float = 1.0,
                  pixel_bce_weight: float = 0.0) -> jax.Array:
    """Soft Dice + config.pixel_bce_weight x per-pixel BCE (the default; 0 leaves soft Dice)."""
    loss = soft_dice(outputs, batch, dice_smooth=dice_smooth)
    if pixel_bce_weight:
        loss = loss + pixel_bce_weight * pixel_bce_loss(outputs["logits"], batch["mask"])
    return loss


def batch_dice(outputs: dict, batch: dict, *, dice_smooth: float = 1.0) -> jax.Array:
    """The classic Keras starter's loss, minus the Dice of the whole (per-device) batch of
    sigmoid outputs: -(2 sum(p t) + s) / (sum(p) + sum(t) + s), the same value for every
    example, [B] float32 (its mean is that value). One large frame dominates it, and empty
    frames count only through the others' denominator."""
    probs = jax.nn.sigmoid(outputs["logits"].astype("float32"))
    masks = batch["mask"].astype("float32")
    dice = (2.0 * (probs * masks).sum() + dice_smooth) / (probs.sum() + masks.sum() + dice_smooth)
    return -dice * jnp.ones(probs.shape[0], jnp.float32)


def with_presence(loss: jax.Array, outputs: dict, batch: dict,
                  presence_weight: float) -> jax.Array:
    """`loss` [B] + presence_weight x presence BCE when `outputs` has "presence"."""
    if "presence" in outputs and presence_weight:
        loss = loss + presence_weight * presence_bce_loss(outputs["presence"], batch["mask"])
    return loss


def from_config(config: ml_collections.ConfigDict) -> LossFn:
    """The training loss of `config`: `(outputs, batch) -> [B] float32`."""
    name = config.loss
    bound = registry.bind(registry.resolve(name, LOSSES, "config.loss"), config,
                          config.loss_args)
    presence_weight = config.presence_weight

    def loss(outputs: dict, batch: dict) -> jax.Array:
        values = bound(outputs, batch)
        chex.assert_shape(values, (batch["mask"].shape[0],),
                          custom_message=f"config.loss={name!r} must return one value per "
                                         "example, [B]")
        return with_presence(values.astype("float32"), outputs, batch, presence_weight)

    return loss
