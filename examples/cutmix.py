"""CutMix for segmentation (Yun et al., 2019, arXiv:1905.04899), a nerve-jax batch transform.

With probability `probability`, each training frame gets a box cut from another frame of the
same device's batch pasted in, image and mask together, so the labels stay exact: the model
sees nerves, and nerve-like structures, in new surroundings and at new positions. The box's
height and width are each a uniform fraction in [min_fraction, max_fraction] of the frame's.
A pure function of (batch, rng), run on the device inside the train step; its randomness
comes from the step's rng, so a resumed run draws the same boxes.

    config.batch_transform = "examples.cutmix:cutmix"
    config.batch_transform_args = ml_collections.ConfigDict({"probability": 0.5})
"""

import jax
import jax.numpy as jnp


def box_masks(rng: jax.Array, batch_size: int, height: int, width: int, min_fraction: float,
              max_fraction: float) -> jax.Array:
    """[B, H, W, 1] bool: one axis-aligned box per example, at a uniform position."""
    size_rng, position_rng = jax.random.split(rng)
    fractions = jax.random.uniform(size_rng, (batch_size, 2), minval=min_fraction,
                                   maxval=max_fraction)
    sizes = jnp.round(fractions * jnp.array([height, width])).astype(jnp.int32)
    corners = jnp.floor(jax.random.uniform(position_rng, (batch_size, 2))
                        * (jnp.array([height, width]) - sizes + 1)).astype(jnp.int32)
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    inside = ((rows >= corners[:, 0, None, None]) & (rows < (corners + sizes)[:, 0, None, None])
              & (cols >= corners[:, 1, None, None]) & (cols < (corners + sizes)[:, 1, None, None]))
    return inside[..., None]


def cutmix(batch: dict, rng: jax.Array, *, probability: float = 0.5, min_fraction: float = 0.2,
           max_fraction: float = 0.5) -> dict:
    """batch: image, mask [B, H, W, 1] -> the same keys, some frames with a pasted box."""
    images, masks = batch["image"], batch["mask"]
    b, h, w, _ = images.shape
    partner_rng, apply_rng, box_rng = jax.random.split(rng, 3)
    partners = jax.random.permutation(partner_rng, b)
    applied = jax.random.uniform(apply_rng, (b,)) < probability
    paste = box_masks(box_rng, b, h, w, min_fraction, max_fraction) & applied[:, None, None, None]
    return {**batch, "image": jnp.where(paste, images[partners], images),
            "mask": jnp.where(paste, masks[partners], masks)}
