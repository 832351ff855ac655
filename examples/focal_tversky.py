"""Focal Tversky loss (Abraham and Khan, 2019, arXiv:1810.07842), a nerve-jax loss.

Tversky index TI = (TP + s) / (TP + alpha FN + beta FP + s) on soft counts of each frame; the loss
is (1 - TI) ** gamma. alpha > beta weighs a missed nerve pixel above a false one (recall), and
gamma < 1 keeps the gradient up on frames that are nearly right. With alpha = beta = 0.5 and
gamma = 1 it is the soft Dice loss. On a frame without a nerve TP = FN = 0, so the loss is
1 - s / (beta FP + s): as with nerve-jax's soft Dice, a smoothing `s` of the order of a nerve's
area keeps false positives penalised.

    config.loss = "examples.focal_tversky:focal_tversky"
    config.loss_args = ml_collections.ConfigDict({"alpha": 0.7, "beta": 0.3, "gamma": 0.75})
"""

import jax
import jax.numpy as jnp


def focal_tversky(outputs: dict, batch: dict, *, alpha: float = 0.7, beta: float = 0.3,
                  gamma: float = 0.75, smooth: float = 100.0) -> jax.Array:
    """outputs["logits"] [B, H, W, 1], batch["mask"] [B, H, W, 1] -> [B] float32."""
    probs = jax.nn.sigmoid(outputs["logits"].astype(jnp.float32))
    mask = batch["mask"].astype(jnp.float32)
    axes = (1, 2, 3)
    tp = jnp.sum(probs * mask, axis=axes)
    fn = jnp.sum((1.0 - probs) * mask, axis=axes)
    fp = jnp.sum(probs * (1.0 - mask), axis=axes)
    tversky = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    return jnp.power(jnp.maximum(1.0 - tversky, 0.0), gamma)
