"""Reading and validating the Kaggle "Ultrasound Nerve Segmentation" folder layout.

Layout: `train/<subject>_<frame>.tif` with `train/<subject>_<frame>_mask.tif`,
`test/<id>.tif`, optionally `train_masks.csv`. Images are 420x580 uint8 grayscale TIFFs,
LZW-compressed; masks hold only 0 and 255.
"""

import concurrent.futures
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


@dataclasses.dataclass(frozen=True)
class TrainPair:
    """One training frame: `<subject>_<frame>.tif` with its `<subject>_<frame>_mask.tif`."""

    subject: int
    frame: int
    image_path: str
    mask_path: str

    @property
    def name(self) -> str:
        return f"{self.subject}_{self.frame}"


@dataclasses.dataclass(frozen=True)
class TestImage:
    id: int
    path: str


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise DataError(f"{path}: {what} folder not found")


def pair_train_files(train_dir: str) -> tuple[list[TrainPair], list[str]]:
    images, masks, problems = {}, {}, []
    for name in sorted(os.listdir(train_dir)):
        if m := TRAIN_MASK_RE.match(name):
            masks[(int(m[1]), int(m[2]))] = os.path.join(train_dir, name)
        elif m := TRAIN_IMAGE_RE.match(name):
            images[(int(m[1]), int(m[2]))] = os.path.join(train_dir, name)
        elif name.lower().endswith((".tif", ".tiff")):
            problems.append(f"{os.path.join(train_dir, name)}: name is not "
                            "<subject>_<frame>.tif or <subject>_<frame>_mask.tif")
    for key in sorted(images.keys() - masks.keys()):
        problems.append(f"{images[key]}: image without its mask ({key[0]}_{key[1]}_mask.tif)")
    for key in sorted(masks.keys() - images.keys()):
        problems.append(f"{masks[key]}: mask without its image ({key[0]}_{key[1]}.tif)")
    pairs = [TrainPair(s, f, images[(s, f)], masks[(s, f)])
             for s, f in sorted(images.keys() & masks.keys())]
    return pairs, problems


def check_image(path: str, is_mask: bool = False) -> list[str]:
    """Decodes one TIFF and lists its problems (unreadable, size, mask values); [] when fine."""
    try:
        array = read_tiff(path)
    except DataError as e:
        return [str(e)]
    if array.shape != IMAGE_SHAPE:
        return [f"{path}: size {array.shape[0]}x{array.shape[1]} (rows x cols), "
                f"expected {HEIGHT}x{WIDTH}"]
    if is_mask:
        bad = np.setdiff1d(np.unique(array), [0, 255])
        if bad.size:
            return [f"{path}: mask holds values other than 0 and 255: {bad[:5].tolist()}"]
    return []


def _check_files(jobs: list[tuple[str, bool]], workers: int) -> list[str]:
    # Pillow releases the GIL while decoding, so threads use every core.
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda job: check_image(*job), jobs)
        return [problem for found in results for problem in found]


def scan_train(kaggle_dir: str, workers: int = 0) -> list[TrainPair]:
    """Pairs and checks every training file; raises DataError listing every problem found."""
    train_dir = os.path.join(kaggle_dir, "train")
    _require_dir(train_dir, "training")
    pairs, problems = pair_train_files(train_dir)
    if not pairs and not problems:
        problems.append(f"{train_dir}: no <subject>_<frame>.tif images found")
    jobs = [(p.image_path, False) for p in pairs] + [(p.mask_path, True) for p in pairs]
    problems += _check_files(jobs, workers or os.cpu_count() or 1)
    if problems:
        raise DataError(f"{train_dir}: {len(problems)} problem(s) in the training data",
                        problems)
    return pairs


def scan_test(test_dir: str, workers: int = 0) -> list[TestImage]:
    """Lists and checks `<id>.tif` test images sorted by id; raises DataError on any problem."""
    _require_dir(test_dir, "test")
    images, problems = [], []
    for name in sorted(os.listdir(test_dir)):
        if m := TEST_IMAGE_RE.match(name):
            images.append(TestImage(int(m[1]), os.path.join(test_dir, name)))
        elif name.lower().endswith((".tif", ".tiff")):
            problems.append(f"{os.path.join(test_dir, name)}: name is not <id>.tif")
    if not images and not problems:
        problems.append(f"{test_dir}: no <id>.tif images found")
    problems += _check_files([(im.path, False) for im in images], workers or os.cpu_count() or 1)
    if problems:
        raise DataError(f"{test_dir}: {len(problems)} problem(s) in the test images", problems)
    return sorted(images, key=lambda im: im.id)
