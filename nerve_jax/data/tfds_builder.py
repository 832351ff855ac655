"""TFDS builder `ultrasound_nerve` for the Kaggle Ultrasound Nerve Segmentation data.

Manual download: the manual dir is a folder in Kaggle layout (train/, test/). Records store
images and masks PNG-encoded. Train and test share one feature set: test examples have an
all-zero mask and subject = frame = -1; train examples have id = -1.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from nerve_jax.data import kaggle

_SHAPE = (kaggle.HEIGHT, kaggle.WIDTH, 1)


class UltrasoundNerve(tfds.core.GeneratorBasedBuilder):
    """Neck ultrasound frames with brachial plexus masks (Kaggle 2016)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Train pairs and test images from the Kaggle download."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the competition data from the Kaggle "Ultrasound Nerve Segmentation" page and
    unzip it into one folder, the manual dir, so that it holds:
      train/<subject>_<frame>.tif and train/<subject>_<frame>_mask.tif  (from train.zip)
      test/<id>.tif                                                    (from test.zip)
    Then pass that folder as the manual dir (`nerve-jax train --config.kaggle_dir=DIR`, or
    `tfds build --manual_dir=DIR`).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=_SHAPE, encoding_format="png"),
                    "mask": tfds.features.Image(shape=_SHAPE, encoding_format="png"),
                    "subject": np.int32,
                    "frame": np.int32,
                    "has_nerve": np.bool_,
                    "id": np.int32,
                }
            ),
            supervised_keys=("image", "mask"),
            homepage="https://www.kaggle.com/c/ultrasound-nerve-segmentation",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        splits = {"train": self._generate_examples(kaggle.scan_train(manual_dir), [])}
        test_dir = os.path.join(manual_dir, "test")
        if os.path.isdir(test_dir):
            splits["test"] = self._generate_examples([], kaggle.scan_test(test_dir))
        return splits

    def _generate_examples(self, pairs: list[kaggle.TrainPair], tests: list[kaggle.TestImage]):
        yield from _train_examples(pairs)
        yield from _test_examples(tests)


def _train_examples(pairs: list[kaggle.TrainPair]):
    for pair in pairs:
        mask = (kaggle.read_tiff(pair.mask_path) > 0).astype(np.uint8)
        yield (
            pair.name,
            {
                "image": kaggle.read_tiff(pair.image_path)[..., None],
                "mask": mask[..., None],
                "subject": pair.subject,
                "frame": pair.frame,
                "has_nerve": bool(mask.any()),
                "id": -1,
            },
        )


def _test_examples(images: list[kaggle.TestImage]):
    empty_mask = np.zeros(_SHAPE, np.uint8)
    for image in images:
        yield (
            str(image.id),
            {
                "image": kaggle.read_tiff(image.path)[..., None],
                "mask": empty_mask,
                "subject": -1,
                "frame": -1,
                "has_nerve": False,
                "id": image.id,
            },
        )


def prepare(kaggle_dir: str, data_dir: str) -> UltrasoundNerve:
    """Builds the dataset from `kaggle_dir` into `data_dir` unless it is there already."""
    builder = UltrasoundNerve(data_dir=data_dir)
    config = tfds.download.DownloadConfig(manual_dir=os.path.abspath(kaggle_dir))
    builder.download_and_prepare(download_config=config)
    return builder
