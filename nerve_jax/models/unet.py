"""Flax linen UNet returning per-pixel nerve logits.

Encoder: `depth` levels of (3x3 conv + BN + ReLU) x 2 then 2x2 max-pool, feature count doubling
per level from `base_features`; a bottleneck block; a mirrored decoder with skip connections.
BatchNorm statistics are averaged over `axis_name` in training (synchronised BN), so a batch split
over devices normalises exactly like the same batch on one device.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

UPSAMPLE_CHOICES = ("pixel_shuffle", "transpose")
# "batch": synchronised BatchNorm after each convolution; "none": convolutions with a bias and
# nothing between them and the ReLU (the classic Keras starter).
NORM_CHOICES = ("batch", "none")
# Compute dtypes (parameters stay float32): bfloat16 for GPUs and TPUs.
DTYPE_CHOICES = ("float32", "bfloat16")


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 stride-2 max-pool as a reshape and a max over the two window axes.

    The same function as `nn.max_pool(x, (2, 2), (2, 2))`, but its gradient is an elementwise
    comparison instead of select-and-scatter, which XLA:CPU expands into a scatter with iota
    indices over the whole activation (6x slower here). Where a window holds tied maxima the
    gradient is shared between them rather than given to one: an equally valid subgradient.
    """
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def depth_to_space(x: jax.Array, block: int) -> jax.Array:
    """[B, H, W, C * block**2] -> [B, H * block, W * block, C] (TensorFlow's DepthToSpace order)."""
    b, h, w, c = x.shape
    out_c = c // (block * block)
    x = x.reshape(b, h, w, block, block, out_c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * block, w * block, out_c)


class ConvBlock(nn.Module):
    """(3x3 conv -> BatchNorm -> ReLU) twice; with norm "none", (3x3 conv with bias -> ReLU)."""

    features: int
    dtype: Any = jnp.float32
    axis_name: str | None = None
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.norm not in NORM_CHOICES:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {NORM_CHOICES}")
        batch_norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            axis_name=self.axis_name if train else None,
            dtype=self.dtype,
        )
        for _ in range(2):
            x = nn.Conv(self.features, (3, 3), use_bias=self.norm == "none", dtype=self.dtype)(x)
            x = nn.relu(batch_norm()(x) if self.norm == "batch" else x)
        return x


class Upsample(nn.Module):
    """2x learned upsampling.

    'transpose' is a 2x2 stride-2 transposed convolution. 'pixel_shuffle' is its exact
    equivalent (a 1x1 convolution to 4x the channels, then depth-to-space): the same function
    class and parameter count, but a plain matmul that every backend runs fast.
    """

    features: int
    kind: str = "pixel_shuffle"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "transpose":
            return nn.ConvTranspose(self.features, (2, 2), strides=(2, 2), dtype=self.dtype)(x)
        if self.kind == "pixel_shuffle":
            x = nn.Conv(4 * self.features, (1, 1), dtype=self.dtype)(x)
            return depth_to_space(x, 2)
        raise ValueError(f"unknown upsample {self.kind!r}; choose one of {UPSAMPLE_CHOICES}")


class PresenceHead(nn.Module):
    """Bottleneck features [B, h, w, C] -> one "nerve present" logit per image, [B] float32.

    Global average and max pooling, concatenated, then a linear layer: the max keeps a small
    bright structure visible that the average would dilute.
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1)
        return nn.Dense(1, dtype=self.dtype)(pooled)[:, 0].astype(jnp.float32)


class UNet(nn.Module):
    """Input [B, H, W, C] float (H, W divisible by 2**depth) -> {"logits": mask logits [B, H, W,
    1] float32, and with `presence_head` "presence": logits [B] float32}.

    The input is first standardised as (x - input_mean) / input_std (0 and 1: unchanged), so a
    config can fix the training set's statistics, as the classic starter did."""

    depth: int = 4
    base_features: int = 32
    upsample: str = "pixel_shuffle"
    presence_head: bool = False
    norm: str = "batch"
    input_mean: float = 0.0
    input_std: float = 1.0
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        check_input_size(x.shape[1:3], self.depth)
        block = functools.partial(ConvBlock, dtype=self.dtype, axis_name=self.axis_name,
                                  norm=self.norm)
        if (self.input_mean, self.input_std) != (0.0, 1.0):
            x = (x - self.input_mean) / self.input_std
        x = x.astype(self.dtype)
        skips = []
        for level in range(self.depth):
            x = block(self.base_features * 2**level)(x, train)
            skips.append(x)
            x = max_pool_2x2(x)
        x = block(self.base_features * 2**self.depth)(x, train)
        presence = PresenceHead(dtype=self.dtype)(x) if self.presence_head else None
        for level in reversed(range(self.depth)):
            features = self.base_features * 2**level
            x = Upsample(features, self.upsample, dtype=self.dtype)(x)
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = block(features)(x, train)
        logits = nn.Conv(1, (1, 1), dtype=self.dtype)(x)
        outputs = {"logits": logits.astype(jnp.float32)}
        if presence is not None:
            outputs["presence"] = presence
        return outputs


def check_input_size(image_size: tuple[int, int], depth: int) -> None:
    """Raises ValueError unless both sides are divisible by 2**depth (needed by the skips)."""
    factor = 2**depth
    if any(side % factor for side in image_size):
        raise ValueError(
            f"image_size {tuple(image_size)} must be divisible by 2**depth = {factor} "
            f"(model.depth = {depth})"
        )
