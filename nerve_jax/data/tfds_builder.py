"""TFDS builder `ultrasound_nerve` for the Kaggle Ultrasound Nerve Segmentation data.

Registered when `nerve_jax` is imported, and `tfds build ultrasound_nerve --imports nerve_jax
--manual_dir DIR` builds it. The manual dir is the Kaggle download: `train.zip` and `test.zip`
as shipped, or their contents unzipped into `train/` and `test/`, next to `train_masks.csv`
and `sample_submission.csv`. Every file is checked (kaggle.inspect's checks; each TIFF is
decoded once, as it is read for its record): bad input stops the build with every problem
listed, and TFDS moves nothing into place. `data_dir()` is the rule for where builds live.

A build follows its source: `prepare` builds each download into its own TFDS config,
`<data_dir>/ultrasound_nerve/src_<first 12 hex of kaggle.fingerprint>/<version>`, so builds
of other downloads, or of this one before its files changed, stay next to it and are never
read for it; the source (folder and full fingerprint) is kept in the build's metadata too.
To read a build in your own code (`nerve-jax build` prints its folder):

    tfds.builder_from_directory("<data_dir>/ultrasound_nerve/src_.../1.1.0")   # no import
    tfds.load("ultrasound_nerve/src_...", data_dir="<data_dir>")
    tfds.load("ultrasound_nerve", data_dir="<data_dir>")  # after `import nerve_jax`; below

Plain `ultrasound_nerve` names the data dir's only `src_` build when it holds exactly one,
else the unnamed config that `tfds build` makes (`<data_dir>/ultrasound_nerve/<version>`).

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
import re
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
_SOURCE_PREFIX = "src_"
_SOURCE_CONFIG = re.compile(r"src_[0-9a-f]{12}")
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


def config_name(fingerprint: str) -> str:
    """The TFDS config that holds the build of the files with this `kaggle.fingerprint`."""
    return _SOURCE_PREFIX + fingerprint[:12]


@functools.cache
def _source_config(name: str) -> tfds.core.BuilderConfig:
    return tfds.core.BuilderConfig(
        name=name, description=f"Built from the Kaggle files whose fingerprint begins with "
                               f"{name.removeprefix(_SOURCE_PREFIX)}.")


def source_builds(data_dir: str) -> list[str]:
    """The config names of the finished source builds of this version in `data_dir`, sorted."""
    folder = fileio.join(data_dir, NAME)
    try:
        names = fileio.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    version = str(UltrasoundNerve.VERSION)
    return sorted(n for n in names
                  if _SOURCE_CONFIG.fullmatch(n) and _is_built(fileio.join(folder, n, version)))


def _is_built(folder: str) -> bool:
    """TFDS writes dataset_info.json into a build's folder once it is complete (`is_prepared`
    says the same, with a warning for each folder without one)."""
    return fileio.isfile(fileio.join(folder, "dataset_info.json"))


class UltrasoundNerve(tfds.core.GeneratorBasedBuilder):
    """Neck ultrasound frames with brachial plexus masks (Kaggle 2016).

    Its configs are the source builds, `src_<12 hex>` (see `config_name`), and the unnamed
    one of `tfds build`. Without `config`, it is the data dir's only source build when there
    is exactly one (so `tfds.load("ultrasound_nerve", data_dir=...)` reads what
    `nerve-jax build` made), else the unnamed config.
    """

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

    def __init__(self, *, data_dir: str | None = None,
                 config: str | tfds.core.BuilderConfig | None = None, **kwargs):
        if config is None:
            builds = source_builds(data_dir or _tfds_default())
            config = builds[0] if len(builds) == 1 else None
        super().__init__(data_dir=data_dir, config=config, **kwargs)

    @classmethod
    def get_builder_config(cls, name: str, version=None) -> tfds.core.BuilderConfig | None:
        if _SOURCE_CONFIG.fullmatch(name):
            return _source_config(name)
        return super().get_builder_config(name, version)

    def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
        """TFDS's, but a finished build is not reused for a manual dir of other files
        (UserError), and the unnamed config is not built without one when the data dir holds
        several source builds (UserError naming them)."""
        manual_dir = download_config.manual_dir if download_config else None
        if manual_dir and _is_built(self.data_dir):
            manual_dir = os.fspath(manual_dir)
            _check_source(self, kaggle.fingerprint(manual_dir), manual_dir)
        elif not manual_dir and self.builder_config is None and not _is_built(self.data_dir):
            _check_unambiguous(fileio.dirname(fileio.dirname(self.data_dir)))
        super().download_and_prepare(download_dir=download_dir,
                                     download_config=download_config, **kwargs)

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
        fingerprint = kaggle.fingerprint(kaggle_dir)
        if self.builder_config and self.builder_config.name != config_name(fingerprint):
            raise UserError(f"{kaggle_dir}: its files changed while {NAME}/"
                            f"{self.builder_config.name} was being built from them: build again")
        self.info.metadata[SOURCE_KEY] = {"kaggle_dir": fileio.absolute(kaggle_dir),
                                          "fingerprint": fingerprint}
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
    """Where the TFDS builds live: the one rule `nerve-jax build`, `train`, `evaluate`, `tune`
    and the notebook share.

    `configured` (config.tfds_data_dir, build's --tfds-data-dir) when set; else `<workdir>/tfds`
    when an earlier nerve-jax built there; else TFDS's own default, $TFDS_DATA_DIR or
    ~/tensorflow_datasets, where `tfds.load("ultrasound_nerve/src_...")` finds a build too.
    """
    if configured:
        return configured
    if workdir is not None and fileio.isdir(fileio.join(workdir, "tfds", NAME)):
        return fileio.join(workdir, "tfds")
    return _tfds_default()


def _tfds_default() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare(kaggle_dir: str, data_dir: str, progress: bool = True) -> UltrasoundNerve:
    """The build of the files now in `kaggle_dir`, in `data_dir`: the one made before when they
    are unchanged since (same `kaggle.fingerprint`), else a new one, next to any others, made
    after every check (DataError listing every problem; then nothing is built)."""
    fileio.check_folder(kaggle_dir, "the Kaggle download folder")
    fileio.check_bucket(data_dir, "the TFDS data dir")
    fingerprint = kaggle.fingerprint(kaggle_dir)
    builder = UltrasoundNerve(data_dir=data_dir, config=config_name(fingerprint))
    if _is_built(builder.data_dir):
        _check_source(builder, fingerprint, kaggle_dir)
        return builder
    builder.show_progress = progress
    config = tfds.download.DownloadConfig(manual_dir=fileio.absolute(kaggle_dir))
    try:
        with _without_tfds_bars(not runtime.verbose()):
            builder.download_and_prepare(download_config=config)
    except BaseException:
        _remove_if_empty(fileio.dirname(builder.data_dir))
        raise
    return builder


def _remove_if_empty(folder: str) -> None:
    """A failed build leaves its config's folder empty (object stores keep no empty ones)."""
    if not fileio.is_remote(folder):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def prepare_for(config, workdir: str) -> UltrasoundNerve:
    """The build of `config.kaggle_dir`'s files in `data_dir(config.tfds_data_dir, workdir)`,
    made (after every check) unless it is there already; by process 0 only, which alone needs
    config.kaggle_dir, when there are several. `config`: any object with the attributes
    `kaggle_dir` and `tfds_data_dir`."""
    def prepare_fn():
        fileio.check_folder(config.kaggle_dir, "config.kaggle_dir folder")
        return prepare(config.kaggle_dir, folder)

    folder = data_dir(config.tfds_data_dir, workdir)
    return prepare_on_process_zero(prepare_fn, folder)


def prepare_on_process_zero(prepare_fn: Callable[[], UltrasoundNerve],
                            data_dir: str) -> UltrasoundNerve:
    """`prepare_fn()` (a `prepare` into `data_dir`, after any checks of its own) on process 0
    only; the other processes wait for it, learn from it which build it prepared (its config
    name), then open that one. So with several hosts `data_dir` must be one folder that all of
    them see (a shared file system or a bucket); a process that does not find the build there
    stops all of them, saying so."""
    import jax

    if jax.process_count() == 1:
        return prepare_fn()
    built = distributed.run_on_process_zero("tfds", prepare_fn)
    config = _from_process_zero((built and built.builder_config_name) or "")
    builder = built or UltrasoundNerve(data_dir=data_dir, config=config or None)
    distributed.all_agree(_is_built(builder.data_dir), (
        f"process {jax.process_index()}: no {NAME}/{config} build in {data_dir} after process 0 "
        "built it. With several hosts, config.tfds_data_dir (build: --tfds-data-dir) must be a "
        "folder they all share (NFS, gs://...), or built on every host first with "
        "`nerve-jax build`"))
    return builder


def _from_process_zero(text: str, size: int = 64) -> str:
    """Process 0's `text` (ASCII, at most `size` characters) on every process."""
    from jax.experimental import multihost_utils

    codes = np.zeros(size, np.int32)
    codes[:len(text)] = list(text.encode("ascii"))
    shared = np.asarray(multihost_utils.broadcast_one_to_all(codes))
    return bytes(shared.astype(np.uint8)).rstrip(b"\0").decode("ascii")


def _check_source(builder: UltrasoundNerve, fingerprint: str, kaggle_dir: str) -> None:
    """A safety net under the config names: UserError when `builder` records a source whose
    fingerprint is not `fingerprint` (builds by an earlier nerve-jax recorded none)."""
    source = builder.info.metadata.get(SOURCE_KEY) if builder.info.metadata else None
    if source is None or source["fingerprint"] == fingerprint:
        return
    raise UserError(
        f"{builder.data_dir} was built from {source['kaggle_dir']}, whose files differ from "
        f"those now in {kaggle_dir}: build these with `nerve-jax build --kaggle-dir "
        f"{kaggle_dir}`, which keeps each download's build apart, or delete that folder to "
        "rebuild it")


def _check_unambiguous(data_dir: str) -> None:
    builds = source_builds(data_dir)
    if len(builds) > 1:
        raise UserError(
            f"{fileio.join(data_dir, NAME)} holds builds of {len(builds)} downloads "
            f"({', '.join(builds)}): name one, e.g. tfds.load(\"{NAME}/{builds[0]}\", "
            f"data_dir=\"{data_dir}\"), or open its folder with tfds.builder_from_directory")


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
