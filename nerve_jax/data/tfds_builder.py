"""TFDS builder `ultrasound_nerve` for the Kaggle Ultrasound Nerve Segmentation data.

Registered when `nerve_jax` is imported, so `tfds.load('ultrasound_nerve', data_dir=...)` works
in a user's own code, and `tfds build ultrasound_nerve --imports nerve_jax --manual_dir DIR`
builds it. The manual dir is the Kaggle download: `train.zip` and `test.zip` as shipped, or
their contents unzipped into `train/` and `test/`, next to `train_masks.csv` and
`sample_submission.csv`. Every file is checked (kaggle.inspect's checks; each TIFF is decoded
once, as it is read for its record): bad input stops the build with every problem listed, and
TFDS moves nothing into place. `data_dir()` is the rule for where the dataset lives; the
source of a build (folder and a fingerprint of its files) is kept in its metadata, so that a
dataset built from other files is refused.

Records store images and masks PNG-encoded, [420, 580, 1] uint8 (mask in {0, 1}). Train and
test share one feature set: test examples have an all-zero mask and subject = frame = -1;
train examples have id = -1.
"""

import collections
import concurrent.futures
import contextlib
import functools
import io
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tqdm import tqdm

from nerve_jax import fileio, runtime
from nerve_jax.data import kaggle
from nerve_jax.errors import DataError, UserError
from nerve_jax.runtime import distributed

NAME = "ultrasound_nerve"
SOURCE_KEY = "nerve_jax_source"
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


def train_example(download: kaggle.Download,
                  pair: kaggle.TrainPair) -> tuple[str, dict | None, list[str]]:
    """(key, example, []) of a checked pair, or (key, None, its problems)."""
    image, mask, problems = download.read_pair(pair)
    if problems:
        return pair.name, None, problems
    mask = (mask > 0).astype(np.uint8)
    return pair.name, {
        "image": encode_png(image),
        "mask": encode_png(mask),
        "subject": pair.subject,
        "frame": pair.frame,
        "has_nerve": bool(mask.any()),
        "id": -1,
    }, []


def test_example(image: kaggle.TestImage) -> tuple[str, dict | None, list[str]]:
    pixels, problems = kaggle.read_checked(image.path)
    if problems:
        return str(image.id), None, problems
    return str(image.id), {
        "image": encode_png(pixels),
        "mask": encode_png(np.zeros(kaggle.IMAGE_SHAPE, np.uint8)),
        "subject": -1,
        "frame": -1,
        "has_nerve": False,
        "id": image.id,
    }, []


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
            metadata=tfds.core.MetadataDict(),
            homepage="https://www.kaggle.com/c/ultrasound-nerve-segmentation",
        )

    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... prepared"
    # around a build; the progress bar says it.
    def _log_download_bytes(self) -> None:
        if runtime.verbose():
            super()._log_download_bytes()

    def _log_download_done(self) -> None:
        if runtime.verbose():
            super()._log_download_done()

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        # Names, pairing and CSV rows first; each TIFF is checked as it is read for its record.
        kaggle_dir = os.fspath(dl_manager.manual_dir)
        download, problems = kaggle.inspect(kaggle_dir, decode=False)
        if problems:
            kaggle.check_download(kaggle_dir)  # Raises, listing the TIFFs' problems too.
        self.info.metadata[SOURCE_KEY] = {"kaggle_dir": fileio.absolute(kaggle_dir),
                                          "fingerprint": kaggle.fingerprint(kaggle_dir)}
        checked = _CheckedExamples(kaggle_dir, len(download.pairs) + len(download.tests),
                                   progress=getattr(self, "show_progress", True))
        splits = {"train": self._generate_examples(checked.examples(
            functools.partial(train_example, download), download.pairs, last=not download.tests))}
        if download.tests:
            splits["test"] = self._generate_examples(
                checked.examples(test_example, download.tests, last=True))
        return splits

    def _generate_examples(self, examples: Iterator):
        yield from examples


class _CheckedExamples:
    """Examples of the splits, one progress bar over all; the files' problems are collected
    and raised together at the end of the last split, before TFDS moves anything into place
    (it deletes its incomplete folder on the error)."""

    def __init__(self, kaggle_dir: str, total: int, progress: bool):
        self.kaggle_dir = kaggle_dir
        self.problems = []
        self.bar = tqdm(total=total, desc=f"building TFDS {NAME}", unit="frame",
                        disable=not progress)

    def examples(self, make_example: Callable, items: list, last: bool) -> Iterator:
        # Decoding TIFFs and encoding PNGs on every core; TFDS serialises in this thread.
        for key, example, problems in _ordered_map(make_example, items,
                                                   kaggle.default_workers()):
            self.bar.update(1)
            self.problems += problems
            if example is not None:
                yield key, example
        if last:
            self.bar.close()
            if self.problems:
                raise DataError(f"{self.kaggle_dir}: {len(self.problems)} problem(s) in the "
                                "Kaggle data", self.problems)


def data_dir(configured: str = "", workdir: str | None = None) -> str:
    """Where the TFDS dataset lives: the one rule `nerve-jax build`, `train`, `evaluate`, `tune`
    and the notebook share.

    `configured` (config.tfds_data_dir, build's --tfds-data-dir) when set; else `<workdir>/tfds`
    when an earlier nerve-jax built it there; else TFDS's own default, $TFDS_DATA_DIR or
    ~/tensorflow_datasets, where `tfds.load("ultrasound_nerve")` finds it too.
    """
    if configured:
        return configured
    if workdir is not None and fileio.isdir(fileio.join(workdir, "tfds", NAME)):
        return fileio.join(workdir, "tfds")
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare(kaggle_dir: str, data_dir: str, progress: bool = True) -> UltrasoundNerve:
    """Builds the dataset from `kaggle_dir` into `data_dir` unless it is there already; one
    built from other files is refused (UserError), never silently used."""
    fileio.check_bucket(data_dir, "the TFDS data dir")
    builder = UltrasoundNerve(data_dir=data_dir)
    if builder.is_prepared():
        _check_source(builder, kaggle_dir)
        return builder
    builder.show_progress = progress
    config = tfds.download.DownloadConfig(manual_dir=fileio.absolute(kaggle_dir))
    with _without_tfds_bars(not runtime.verbose()):
        builder.download_and_prepare(download_config=config)
    return builder


def prepare_on_process_zero(prepare_fn: Callable[[], UltrasoundNerve],
                            data_dir: str) -> UltrasoundNerve:
    """`prepare_fn()` (a `prepare` into `data_dir`, after any checks of its own) on process 0
    only; the other processes wait for it, then open what it built. So with several hosts
    `data_dir` must be one folder that all of them see (a shared file system or a bucket); a
    process that does not find the dataset there stops all of them, saying so."""
    import jax

    if jax.process_count() == 1:
        return prepare_fn()
    built = distributed.run_on_process_zero("tfds", prepare_fn)
    builder = built or UltrasoundNerve(data_dir=data_dir)
    distributed.all_agree(builder.is_prepared(), (
        f"process {jax.process_index()}: no {NAME} dataset in {data_dir} after process 0 built "
        "it. With several hosts, config.tfds_data_dir (build: --tfds-data-dir) must be a "
        "folder they all share (NFS, gs://...), or built on every host first with "
        "`nerve-jax build`"))
    return builder


def _check_source(builder: UltrasoundNerve, kaggle_dir: str) -> None:
    source = builder.info.metadata.get(SOURCE_KEY) if builder.info.metadata else None
    if source is None:  # Built by an earlier nerve-jax, which recorded no source.
        return
    if source["fingerprint"] != kaggle.fingerprint(kaggle_dir):
        raise UserError(
            f"{builder.data_dir} holds {NAME} built from {source['kaggle_dir']}, whose files "
            f"differ from those in {kaggle_dir}: set config.tfds_data_dir (build: "
            "--tfds-data-dir) to another folder for this data, or delete that one to rebuild")


@contextlib.contextmanager
def _without_tfds_bars(quiet: bool):
    """TFDS's own progress bars (a dozen per build) off while `quiet`; ours counts the frames."""
    if not quiet:
        yield
        return
    tfds.disable_progress_bar()
    try:
        yield
    finally:
        tfds.display_progress_bar(True)
