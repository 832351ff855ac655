"""TFDS builder `ultrasound_nerve` for the Kaggle Ultrasound Nerve Segmentation data.

Registered when `nerve_jax` is imported, so `tfds.load('ultrasound_nerve', data_dir=...)` works
in a user's own code, and `tfds build ultrasound_nerve --imports nerve_jax --manual_dir DIR`
builds it. The manual dir is the Kaggle download: `train.zip` and `test.zip` as shipped, or
their contents unzipped into `train/` and `test/`, next to `train_masks.csv` and
`sample_submission.csv`. Every file is checked first (kaggle.inspect): bad input stops the build
with every problem listed, before anything is written.

Records store images and masks PNG-encoded, [420, 580, 1] uint8 (mask in {0, 1}). Train and
test share one feature set: test examples have an all-zero mask and subject = frame = -1;
train examples have id = -1.
"""

import collections
import concurrent.futures
import io
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from nerve_jax.data import kaggle

NAME = "ultrasound_nerve"
_SHAPE = (kaggle.HEIGHT, kaggle.WIDTH, 1)


def encode_png(array: np.ndarray) -> bytes:
    """[H, W] uint8 -> PNG bytes (Pillow releases the GIL while compressing)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _ordered_map(fn: Callable, items: Iterable, workers: int, window: int = 64) -> Iterator:
    """fn over items on a thread pool, yielding results in order, at most `window` in flight."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def train_example(pair: kaggle.TrainPair) -> tuple[str, dict]:
    mask = (kaggle.read_tiff(pair.mask_path) > 0).astype(np.uint8)
    return pair.name, {
        "image": encode_png(kaggle.read_tiff(pair.image_path)),
        "mask": encode_png(mask),
        "subject": pair.subject,
        "frame": pair.frame,
        "has_nerve": bool(mask.any()),
        "id": -1,
    }


def test_example(image: kaggle.TestImage) -> tuple[str, dict]:
    return str(image.id), {
        "image": encode_png(kaggle.read_tiff(image.path)),
        "mask": encode_png(np.zeros(kaggle.IMAGE_SHAPE, np.uint8)),
        "subject": -1,
        "frame": -1,
        "has_nerve": False,
        "id": image.id,
    }


class UltrasoundNerve(tfds.core.GeneratorBasedBuilder):
    """Neck ultrasound frames with brachial plexus masks (Kaggle 2016)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Train pairs and test images from the Kaggle download.",
        "1.1.0": "Reads train.zip/test.zip as shipped; masks cross-checked with train_masks.csv.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the competition data from the Kaggle "Ultrasound Nerve Segmentation" page
    (https://www.kaggle.com/c/ultrasound-nerve-segmentation/data) and put these files, as
    downloaded, into one folder (the manual dir):
      train.zip              (train/<subject>_<frame>.tif and train/<subject>_<frame>_mask.tif)
      test.zip               (test/<id>.tif)
      train_masks.csv        (optional: every mask is cross-checked against its RLE row)
      sample_submission.csv  (optional: the test ids are cross-checked against it)
    Unzipped folders train/ and test/ in that folder work as well (they win over the zips).
    Then run `nerve-jax build --kaggle-dir DIR [--tfds-data-dir T]`, or
    `tfds build ultrasound_nerve --imports nerve_jax --manual_dir DIR` (the `tfds` launcher of
    tensorflow-datasets 4.9.10 also needs `pip install apache-beam`).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=_SHAPE, encoding_format="png"),
                "mask": tfds.features.Image(shape=_SHAPE, encoding_format="png"),
                "subject": np.int32,
                "frame": np.int32,
                "has_nerve": np.bool_,
                "id": np.int32,
            }),
            supervised_keys=("image", "mask"),
            homepage="https://www.kaggle.com/c/ultrasound-nerve-segmentation",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        download = kaggle.check_download(os.fspath(dl_manager.manual_dir))
        splits = {"train": self._generate_examples(train_example, download.pairs)}
        if download.tests:
            splits["test"] = self._generate_examples(test_example, download.tests)
        return splits

    def _generate_examples(self, make_example: Callable, items: list):
        # Decoding TIFFs and encoding PNGs on every core; TFDS serialises in this thread.
        yield from _ordered_map(make_example, items, kaggle.default_workers())


def prepare(kaggle_dir: str, data_dir: str) -> UltrasoundNerve:
    """Builds the dataset from `kaggle_dir` into `data_dir` unless it is there already."""
    builder = UltrasoundNerve(data_dir=data_dir)
    config = tfds.download.DownloadConfig(manual_dir=os.path.abspath(kaggle_dir))
    builder.download_and_prepare(download_config=config)
    return builder
