"""Independent references shared by the tests: written from the format's definition, not from
nerve_jax's own functions."""

import numpy as np


def mask_from_rle(pixels: str, shape: tuple[int, int] = (420, 580)) -> np.ndarray:
    """Column-major, 1-based `start length` pairs -> [H, W] bool mask."""
    flat = np.zeros(shape[0] * shape[1], bool)
    values = [int(v) for v in pixels.split()]
    for start, length in zip(values[::2], values[1::2], strict=True):
        flat[start - 1:start - 1 + length] = True
    return flat.reshape(shape[1], shape[0]).T


def submission_masks(path) -> dict[int, np.ndarray]:
    """A submission CSV (header `img,pixels`) -> {id: [420, 580] bool mask}."""
    rows = [line.split(",") for line in open(path).read().splitlines()[1:]]
    return {int(image_id): mask_from_rle(pixels) for image_id, pixels in rows}
