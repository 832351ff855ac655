"""Random augmentation of training batches: one affine per example for image and mask together,
then brightness / contrast / gamma on the image only.

Randomness is stateless: the parameters of the example in slot j of the global batch of step k
are a function of (config.seed, k, j) only, so a run resumed at step k draws exactly what an
uninterrupted run draws at step k, on any number of processes (each augments its slots), and
every epoch draws afresh (augmentation comes after the cache).

It runs in tf.data on the host, overlapped with the train step by prefetch, so the train step
stays a pure function of its batch (docs/performance.md, "Data preparation and input", compares
it with the same warp in JAX).

The mask is warped bilinearly with the image and thresholded at 0.5, the rule `resize_mask` uses
(a pixel is in when at least half covered): the boundary follows the rotated/zoomed outline at
sub-pixel accuracy, where nearest-neighbour snaps it to the source grid (jagged under rotation,
up to half a pixel off), and image and mask share one interpolation call.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import tensorflow as tf

from nerve_jax.errors import UserError

FILL_MODES = ("reflect", "nearest", "constant")
FIELDS = ("enabled", "shift", "rotation", "zoom", "flip", "brightness", "contrast", "gamma",
          "fill_mode")
# Columns of the per-example uniform draws; fixed, so switching one transform off leaves the
# others' draws unchanged.
_SHIFT_Y, _SHIFT_X, _ROTATION, _ZOOM, _FLIP, _BRIGHTNESS, _CONTRAST, _GAMMA = range(8)
_NUM_DRAWS = 8


class AugmentConfigError(UserError, ValueError):
    """A config.augment field holds a value outside its allowed range."""


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Checked augmentation settings (see configs/default.py, `config.augment`).

    Symmetric fields draw uniformly in [-x, x] and are off at 0; (min, max) fields draw uniformly
    in [min, max] and are off at (1, 1); `flip` is a probability.
    """

    shift: float = 0.0  # Fraction of height (rows) and of width (columns).
    rotation: float = 0.0  # Degrees.
    zoom: tuple[float, float] = (1.0, 1.0)  # Scale; > 1 enlarges the content.
    flip: float = 0.0  # Probability of a left-right flip.
    brightness: float = 0.0  # Offset added to the [0, 1] image.
    contrast: tuple[float, float] = (1.0, 1.0)  # Factor around each image's mean.
    gamma: tuple[float, float] = (1.0, 1.0)  # Exponent of the [0, 1] image.
    fill_mode: str = "reflect"  # Pixels mapped from outside the frame; "constant" fills 0.

    @property
    def geometric(self) -> bool:
        return bool(self.shift or self.rotation or self.zoom != (1.0, 1.0) or self.flip)


def _number(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise AugmentConfigError(f"config.augment.{name}={value!r}: expected a number in "
                                 f"[{low:g}, {high:g}]")
    return float(value)


def _range(name: str, value, low: float, inclusive_low: bool) -> tuple[float, float]:
    bound = f"{low:g} {'<=' if inclusive_low else '<'} min <= max"
    problem = f"config.augment.{name}={value!r}: expected (min, max) with {bound}"
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)):
        raise AugmentConfigError(problem)
    lo, hi = float(value[0]), float(value[1])
    if not (lo >= low if inclusive_low else lo > low) or lo > hi or not math.isfinite(hi):
        raise AugmentConfigError(problem)
    return lo, hi


def from_config(config: Mapping | None) -> Augmentation | None:
    """Checks `config.augment`; None when it is absent or `enabled` is False.

    Raises AugmentConfigError (a UserError) naming the first bad field, also when disabled.
    """
    if config is None:
        return None
    unknown = sorted(set(config.keys()) - set(FIELDS))
    if unknown:
        raise AugmentConfigError(f"config.augment has unknown fields {unknown}; known: {FIELDS}")
    defaults = Augmentation()

    def get(name):
        return config.get(name, getattr(defaults, name, False))

    enabled = get("enabled")
    if not isinstance(enabled, bool):
        raise AugmentConfigError(f"config.augment.enabled={enabled!r}: expected True or False")
    fill_mode = get("fill_mode")
    if fill_mode not in FILL_MODES:
        raise AugmentConfigError(f"config.augment.fill_mode={fill_mode!r}: choose one of "
                                 f"{FILL_MODES}")
    settings = Augmentation(
        shift=_number("shift", get("shift"), 0.0, 0.5),
        rotation=_number("rotation", get("rotation"), 0.0, 180.0),
        zoom=_range("zoom", get("zoom"), 0.0, inclusive_low=False),
        flip=_number("flip", get("flip"), 0.0, 1.0),
        brightness=_number("brightness", get("brightness"), 0.0, 1.0),
        contrast=_range("contrast", get("contrast"), 0.0, inclusive_low=True),
        gamma=_range("gamma", get("gamma"), 0.0, inclusive_low=False),
        fill_mode=fill_mode,
    )
    return settings if enabled else None


def batch_seed(seed: int, step: tf.Tensor) -> tf.Tensor:
    """The stateless RNG seed of one global batch: [2] int64 from (seed, step)."""
    base = tf.constant([seed, 0], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int64))


def _symmetric(u: tf.Tensor, magnitude: float) -> tf.Tensor:
    return (2.0 * u - 1.0) * magnitude


def _between(u: tf.Tensor, bounds: tuple[float, float]) -> tf.Tensor:
    return bounds[0] + u * (bounds[1] - bounds[0])


def affine_transforms(draws: tf.Tensor, settings: Augmentation, height: int,
                      width: int) -> tf.Tensor:
    """Per-example output -> input pixel maps for ImageProjectiveTransformV3: [B, 8] float32.

    draws: [B, 8] uniform in [0, 1). The forward map is q = c + t + s R F (p - c) about the
    centre c, with F the optional left-right flip; the op needs its inverse,
    p = c + F R^T (q - c - t) / s, in (x = column, y = row) pixel-index coordinates.
    """
    ty = _symmetric(draws[:, _SHIFT_Y], settings.shift * height)
    tx = _symmetric(draws[:, _SHIFT_X], settings.shift * width)
    angle = _symmetric(draws[:, _ROTATION], settings.rotation * math.pi / 180.0)
    scale = _between(draws[:, _ZOOM], settings.zoom)
    flip = tf.where(draws[:, _FLIP] < settings.flip, -1.0, 1.0)
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a0, a1, b0, b1 = flip * cos, flip * sin, -sin, cos
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
    b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def warp(images: tf.Tensor, transforms: tf.Tensor, fill_mode: str) -> tf.Tensor:
    """Bilinear warp of [B, H, W, C] float32 by [B, 8] output -> input maps."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode=fill_mode.upper())


def _photometric(image: tf.Tensor, draws: tf.Tensor, settings: Augmentation) -> tf.Tensor:
    """Gamma, then contrast, then brightness on [B, H, W, 1] in [0, 1]; stays in [0, 1]."""
    def per_example(column: int) -> tf.Tensor:  # [B, 1, 1, 1]
        return draws[:, column, None, None, None]

    if settings.gamma != (1.0, 1.0):
        image = tf.pow(image, _between(per_example(_GAMMA), settings.gamma))
    if settings.contrast != (1.0, 1.0):
        mean = tf.reduce_mean(image, axis=(1, 2, 3), keepdims=True)
        image = mean + _between(per_example(_CONTRAST), settings.contrast) * (image - mean)
    if settings.brightness:
        image = image + _symmetric(per_example(_BRIGHTNESS), settings.brightness)
    return tf.clip_by_value(image, 0.0, 1.0)


def augment_batch(batch: dict, seed: tf.Tensor, settings: Augmentation,
                  slots: tuple[int, int] | None = None) -> dict:
    """Augments {"image": [b, H, W, 1] float32 in [0, 1], "mask": [b, H, W, 1] float32 {0, 1}}.

    seed: [2] int64 (see `batch_seed`). `slots` (first, global batch size): the batch holds
    slots first..first+b-1 of a global batch, and draws what they draw there; None: the whole
    batch. Returns the same keys, shapes and value ranges; other keys pass through.
    """
    image, mask = batch["image"], batch["mask"]
    first, rows = slots or (0, tf.shape(image)[0])
    draws = tf.random.stateless_uniform((rows, _NUM_DRAWS), seed=seed)
    draws = draws[first:first + tf.shape(image)[0]]
    if settings.geometric:
        transforms = affine_transforms(draws, settings, image.shape[1], image.shape[2])
        both = warp(tf.concat([image, mask], axis=-1), transforms, settings.fill_mode)
        image, mask = both[..., :1], tf.cast(both[..., 1:] >= 0.5, mask.dtype)
    if settings.gamma != (1.0, 1.0) or settings.contrast != (1.0, 1.0) or settings.brightness:
        image = _photometric(image, draws, settings)
    return {**batch, "image": image, "mask": mask}


def augment_batches(ds: tf.data.Dataset, settings: Augmentation, seed: int, first_step: int,
                    slots: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Augments a dataset of training batches whose first element is step `first_step`;
    `slots` as in augment_batch."""
    def augment(step, batch):
        return augment_batch(batch, batch_seed(seed, step), settings, slots)

    return ds.enumerate(first_step).map(augment, tf.data.AUTOTUNE, deterministic=True)
