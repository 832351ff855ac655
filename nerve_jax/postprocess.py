"""Post-processing: from model logits to full-resolution masks."""

import jax
import jax.numpy as jnp

from nerve_jax.data import kaggle


def full_resolution_probabilities(logits: jax.Array) -> jax.Array:
    """Logits [B, h, w, 1] at model resolution -> nerve probabilities [B, 420, 580] float32."""
    probs = jax.nn.sigmoid(logits[..., 0].astype(jnp.float32))
    return jax.image.resize(probs, (probs.shape[0], kaggle.HEIGHT, kaggle.WIDTH), "linear")


def masks_from_probabilities(probs: jax.Array, threshold: float, min_area: int,
                             presence: jax.Array | None = None,
                             presence_threshold: float = 0.5) -> jax.Array:
    """[B, H, W] probabilities -> [B, H, W] bool masks. A mask with fewer than `min_area`
    pixels is emptied (a false positive on an empty frame costs a whole image's score), and so
    is every mask whose frame's presence probability [B] is below `presence_threshold`."""
    masks = probs > threshold
    keep = jnp.sum(masks, axis=(1, 2)) >= min_area
    if presence is not None:
        keep = keep & (presence >= presence_threshold)
    return masks & keep[:, None, None]
