"""Writes tests/dummy_data/ultrasound_nerve: a tiny Kaggle download as shipped (zips + CSVs).

  .venv/bin/python tests/dummy_data/make_ultrasound_nerve.py

2 subjects x 2 frames (one frame per subject with a nerve) and 2 test images, full 420x580
LZW TIFFs with little texture, so the zips stay a few KB.
"""

import io
import os
import sys
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from nerve_jax import rle  # noqa: E402
from nerve_jax.data import kaggle  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ultrasound_nerve")


def tiff_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF", compression="tiff_lzw")
    return buffer.getvalue()


def frame(seed: int) -> np.ndarray:
    rows = np.arange(kaggle.HEIGHT)[:, None]
    cols = np.arange(kaggle.WIDTH)[None, :]
    return ((rows // 20 + cols // 29 + seed) % 7 * 30).astype(np.uint8)


def nerve_mask(subject: int) -> np.ndarray:
    mask = np.zeros(kaggle.IMAGE_SHAPE, np.uint8)
    mask[140 + 10 * subject: 190 + 10 * subject, 320:400] = 255
    return mask


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    rows = []
    with zipfile.ZipFile(os.path.join(OUT, "train.zip"), "w", zipfile.ZIP_DEFLATED) as z:
        for subject in (1, 2):
            for number in (1, 2):
                mask = nerve_mask(subject) if number == 1 else np.zeros(kaggle.IMAGE_SHAPE,
                                                                        np.uint8)
                z.writestr(f"train/{subject}_{number}.tif", tiff_bytes(frame(subject + number)))
                z.writestr(f"train/{subject}_{number}_mask.tif", tiff_bytes(mask))
                rows.append(f"{subject},{number},{rle.encode(mask > 0)}")
    with zipfile.ZipFile(os.path.join(OUT, "test.zip"), "w", zipfile.ZIP_DEFLATED) as z:
        for image_id in (1, 2):
            z.writestr(f"test/{image_id}.tif", tiff_bytes(frame(10 + image_id)))
    with open(os.path.join(OUT, "train_masks.csv"), "w") as f:
        f.write("subject,img,pixels\n" + "\n".join(rows) + "\n")
    with open(os.path.join(OUT, "sample_submission.csv"), "w") as f:
        f.write("img,pixels\n1,1 1\n2,1 1\n")


if __name__ == "__main__":
    main()
