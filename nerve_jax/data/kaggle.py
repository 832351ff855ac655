"""Reading and validating the Kaggle "Ultrasound Nerve Segmentation" folder layout.

Layout: `train/<subject>_<frame>.tif` with `train/<subject>_<frame>_mask.tif`,
`test/<id>.tif`, optionally `train_masks.csv`. Images are 420x580 uint8 grayscale TIFFs,
LZW-compressed; masks hold only 0 and 255.
"""

import dataclasses
import os
import re

import numpy as np
from PIL import Image

from nerve_jax.errors import DataError

HEIGHT, WIDTH = 420, 580
IMAGE_SHAPE = (HEIGHT, WIDTH)

TRAIN_IMAGE_RE = re.compile(r"^(\d+)_(\d+)\.tif$")
TRAIN_MASK_RE = re.compile(r"^(\d+)_(\d+)_mask\.tif$")
TEST_IMAGE_RE = re.compile(r"^(\d+)\.tif$")


def write_tiff(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a 2-D uint8 array as an LZW-compressed grayscale TIFF, as Kaggle ships them."""
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"{path}: expected a 2-D uint8 array, got {array.dtype} {array.shape}")
    Image.fromarray(array).save(path, format="TIFF", compression="tiff_lzw")


def read_tiff(path: str | os.PathLike) -> np.ndarray:
    """Reads a single-channel 8-bit TIFF (LZW or uncompressed) as a 2-D uint8 array.

    Raises DataError naming the file when it is unreadable, truncated or not 8-bit grayscale.
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode, array = im.mode, np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable or truncated TIFF ({e})") from None
    if mode != "L" or array.ndim != 2:
        raise DataError(
            f"{path}: expected an 8-bit single-channel image, got mode {mode!r} "
            f"with shape {array.shape}"
        )
    return array
