"""A residual UNet with GroupNorm: a nerve-jax model without BatchNorm (no batch_stats).

GroupNorm normalises each example on its own, so training needs no synchronised statistics
across devices and evaluation behaves as training does, whatever the batch size. Each level is a
residual block (two 3x3 convolutions with GroupNorm and ReLU, plus a 1x1 projection of its input);
downsampling, upsampling and the presence head are nerve-jax's UNet pieces.

    config.model.name = "examples.gn_resunet:GroupNormResUNet"
    config.model.groups = 4   # besides depth, base_features, upsample, presence_head, dtype
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nerve_jax.models import unet


class ResidualBlock(nn.Module):
    features: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(nn.Conv, self.features, (3, 3), use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.GroupNorm, num_groups=self.groups, dtype=self.dtype)
        y = nn.relu(norm()(conv()(x)))
        y = norm()(conv()(y))
        shortcut = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype)(x)
        return nn.relu(y + shortcut)


class GroupNormResUNet(nn.Module):
    """Input [B, H, W, 1] (H, W divisible by 2**depth) -> {"logits": [B, H, W, 1] float32, and
    with `presence_head` "presence": [B] float32}. base_features must be divisible by groups."""

    depth: int = 4
    base_features: int = 32
    upsample: str = "pixel_shuffle"
    presence_head: bool = False
    dtype: Any = jnp.float32
    groups: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        del train  # GroupNorm behaves the same in training and evaluation.
        unet.check_input_size(x.shape[1:3], self.depth)
        block = functools.partial(ResidualBlock, groups=self.groups, dtype=self.dtype)
        x = x.astype(self.dtype)
        skips = []
        for level in range(self.depth):
            x = block(self.base_features * 2**level)(x)
            skips.append(x)
            x = unet.max_pool_2x2(x)
        x = block(self.base_features * 2**self.depth)(x)
        outputs = {}
        if self.presence_head:
            outputs["presence"] = unet.PresenceHead(dtype=self.dtype)(x)
        for level in reversed(range(self.depth)):
            features = self.base_features * 2**level
            x = unet.Upsample(features, self.upsample, dtype=self.dtype)(x)
            x = block(features)(jnp.concatenate([x, skips[level]], axis=-1))
        outputs["logits"] = nn.Conv(1, (1, 1), dtype=self.dtype)(x).astype(jnp.float32)
        return outputs
