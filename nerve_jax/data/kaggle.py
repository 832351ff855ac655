"""Reading and validating the Kaggle "Ultrasound Nerve Segmentation" download.

Layout, as Kaggle ships it or unzipped: `train.zip` or `train/` holding
`<subject>_<frame>.tif` with `<subject>_<frame>_mask.tif`; `test.zip` or `test/` holding
`<id>.tif`; optionally `train_masks.csv` (subject,img,pixels) and `sample_submission.csv`
(img,pixels). Images are 420x580 uint8 grayscale TIFFs, LZW-compressed; masks hold only 0 and 255.

A file is named by a reference string: its path, or `<archive>.zip::<member>` for a member of
a zip, so the same readers, checks and error messages serve both forms.
"""

import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import io
import os
import posixpath
import re
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from nerve_jax import fileio
from nerve_jax.errors import DataError, Problem

HEIGHT, WIDTH = 420, 580
IMAGE_SHAPE = (HEIGHT, WIDTH)
TRAIN_MASKS_CSV = "train_masks.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
ZIP_MEMBER_SEPARATOR = "::"

TRAIN_IMAGE_RE = re.compile(r"^(\d+)_(\d+)\.tif$")
TRAIN_MASK_RE = re.compile(r"^(\d+)_(\d+)_mask\.tif$")
TEST_IMAGE_RE = re.compile(r"^(\d+)\.tif$")

class _BadFile(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.problem = Problem(kind, message)


# --- Files: paths or zip members --------------------------------------------------------------

def member_ref(archive: str, member: str) -> str:
    return f"{archive}{ZIP_MEMBER_SEPARATOR}{member}"


def _split_ref(ref: str) -> tuple[str, str] | None:
    archive, sep, member = str(ref).partition(ZIP_MEMBER_SEPARATOR)
    if sep and archive.lower().endswith(".zip"):
        return archive, member
    return None


@functools.lru_cache(maxsize=16)
def _open_zip(archive: str) -> zipfile.ZipFile:
    # Kept open for the process: ZipFile serialises reads of its file, so threads may share it.
    try:
        return zipfile.ZipFile(fileio.open(archive, "rb"))
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{archive}: not a readable zip archive ({e})") from None


def read_bytes(ref: str | os.PathLike) -> bytes:
    """The bytes of a file or zip member; DataError naming it when it cannot be read."""
    try:
        if parts := _split_ref(os.fspath(ref)):
            return _open_zip(parts[0]).read(parts[1])
        return fileio.read_bytes(ref)
    except FileNotFoundError:
        raise DataError(f"{ref}: file not found") from None
    except KeyError:
        raise DataError(f"{ref}: no such member in the archive") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{ref}: cannot be read ({e})") from None


def _decode_tiff(ref: str | os.PathLike) -> np.ndarray:
    try:
        data = read_bytes(ref)
    except DataError as e:
        raise _BadFile("missing" if "not found" in str(e) else "unreadable", str(e)) from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode, array = im.mode, np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise _BadFile("unreadable", f"{ref}: unreadable or truncated TIFF ({e})") from None
    if mode != "L" or array.ndim != 2 or array.dtype != np.uint8:
        raise _BadFile("format", f"{ref}: expected an 8-bit single-channel image, got mode "
                                 f"{mode!r}, dtype {array.dtype}, shape {array.shape}")
    return array


def read_tiff(ref: str | os.PathLike) -> np.ndarray:
    """Reads a single-channel 8-bit TIFF (LZW or uncompressed) as a [H, W] uint8 array.

    `ref` is a path or a zip member reference. Raises DataError naming the file when it is
    missing, unreadable, truncated or not 8-bit grayscale.
    """
    try:
        return _decode_tiff(ref)
    except _BadFile as e:
        raise DataError(str(e)) from None


def write_tiff(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a 2-D uint8 array as an LZW-compressed grayscale TIFF, as Kaggle ships them."""
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"{path}: expected a 2-D uint8 array, got {array.dtype} {array.shape}")
    Image.fromarray(array).save(path, format="TIFF", compression="tiff_lzw")


def locate(kaggle_dir: str, part: str) -> str | None:
    """`<kaggle_dir>/<part>/` if it is a folder, else `<kaggle_dir>/<part>.zip`, else None."""
    folder = fileio.join(kaggle_dir, part)
    if fileio.isdir(folder):
        return folder
    archive = folder + ".zip"
    return archive if fileio.isfile(archive) else None


def list_files(source: str) -> list[tuple[str, str]]:
    """[(file name, ref)] of the .tif/.tiff files in a folder or a zip (top level or one
    folder deep, as Kaggle's `train.zip` holds `train/...`), sorted by ref."""
    if source.lower().endswith(".zip") and fileio.isfile(source):
        members = [m for m in _open_zip(source).namelist()
                   if not m.endswith("/") and m.count("/") <= 1 and not m.startswith("__MACOSX")]
        files = [(posixpath.basename(m), member_ref(source, m)) for m in members]
    else:
        files = [(name, fileio.join(source, name)) for name in fileio.listdir(source)]
    return sorted(((n, r) for n, r in files if n.lower().endswith((".tif", ".tiff"))),
                  key=lambda item: item[1])


def fingerprint(kaggle_dir: str) -> str:
    """16 hex digits that change when the download's files do: a digest of the training and
    test TIFFs' names with, for each, its size and CRC-32 inside a zip, or its size and
    modification time in a folder; and of the two CSVs' contents. A zipped download thus keeps
    its fingerprint wherever it is copied; an unzipped one, where a copy keeps the times
    (`cp -p`, `shutil.copytree`). A TIFF in a folder rewritten with other content but the same
    size and modification time goes unnoticed (a rewrite normally moves the time)."""
    digest = hashlib.sha256()
    for part in ("train", "test"):
        if (source := locate(kaggle_dir, part)) is not None:
            for name, ref in list_files(source):
                digest.update(f"{part}/{name}:{_stamp(ref)}\n".encode())
    for name in (TRAIN_MASKS_CSV, SAMPLE_SUBMISSION_CSV):
        if fileio.isfile(path := fileio.join(kaggle_dir, name)):
            content = hashlib.sha256(fileio.read_bytes(path)).hexdigest()
            digest.update(f"{name}:{content}\n".encode())
    return digest.hexdigest()[:16]


def _stamp(ref: str) -> str:
    if parts := _split_ref(ref):
        info = _open_zip(parts[0]).getinfo(parts[1])
        return f"{info.file_size}:{info.CRC:08x}"
    if fileio.is_remote(ref):
        from etils import epath

        stat = epath.Path(ref).stat()
        return f"{stat.length}:{stat.mtime}"
    stat = os.stat(ref)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


# --- What the download holds ------------------------------------------------------------------

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


def _index(files: list[tuple[str, str]], pattern: re.Pattern, key: Callable) -> tuple[dict, list]:
    """{key: ref} for the names matching `pattern`; duplicate-key problems (e.g. 1_1, 01_1)."""
    found, problems = {}, []
    for name, ref in files:
        if m := pattern.match(name):
            k = key(m)
            if k in found:
                problems.append(Problem("duplicate", f"{ref}: same id as {found[k]}"))
            else:
                found[k] = ref
    return found, problems


def _frame_key(m: re.Match) -> tuple[int, int]:
    return int(m[1]), int(m[2])


def pair_train_files(source: str) -> tuple[list[TrainPair], list[Problem]]:
    """Pairs the images and masks of a train folder or zip by (subject, frame)."""
    files = list_files(source)
    masks, problems = _index(files, TRAIN_MASK_RE, _frame_key)
    images, more = _index(files, TRAIN_IMAGE_RE, _frame_key)
    problems += more
    problems += [Problem("name", f"{ref}: name is not <subject>_<frame>.tif or "
                                 "<subject>_<frame>_mask.tif")
                 for name, ref in files
                 if not (TRAIN_MASK_RE.match(name) or TRAIN_IMAGE_RE.match(name))]
    problems += [Problem("unpaired", f"{images[k]}: image without its mask "
                                     f"({k[0]}_{k[1]}_mask.tif)")
                 for k in sorted(images.keys() - masks.keys())]
    problems += [Problem("unpaired", f"{masks[k]}: mask without its image "
                                     f"({k[0]}_{k[1]}.tif)")
                 for k in sorted(masks.keys() - images.keys())]
    pairs = [TrainPair(s, f, images[(s, f)], masks[(s, f)])
             for s, f in sorted(images.keys() & masks.keys())]
    return pairs, problems


def list_test_files(source: str) -> tuple[list[TestImage], list[Problem]]:
    """Test images of a folder or zip sorted by numeric id, and naming problems."""
    files = list_files(source)
    found, problems = _index(files, TEST_IMAGE_RE, lambda m: int(m[1]))
    problems += [Problem("name", f"{ref}: name is not <id>.tif")
                 for name, ref in files if not TEST_IMAGE_RE.match(name)]
    return [TestImage(i, found[i]) for i in sorted(found)], problems


# --- Per-file checks --------------------------------------------------------------------------

def check_image(ref: str, is_mask: bool = False, expected_rle: str | None = None,
                csv_line: int | None = None) -> list[Problem]:
    """Decodes one TIFF and lists its problems; [] when fine.

    Checks it decodes as 8-bit grayscale at 420x580; for masks, that it holds only 0/255 and,
    given `expected_rle` (its train_masks.csv row, at `csv_line`), that it equals that RLE.
    """
    return read_checked(ref, is_mask, expected_rle, csv_line)[1]


def read_checked(ref: str, is_mask: bool = False, expected_rle: str | None = None,
                 csv_line: int | None = None) -> tuple[np.ndarray | None, list[Problem]]:
    """(the decoded [420, 580] uint8 array, []) when `check_image` finds nothing, else
    (None, its problems): one decode serves both the check and the use."""
    try:
        array = _decode_tiff(ref)
    except _BadFile as e:
        return None, [e.problem]
    problems = _array_problems(ref, array, is_mask, expected_rle, csv_line)
    return (None if problems else array), problems


def _array_problems(ref: str, array: np.ndarray, is_mask: bool, expected_rle: str | None,
                    csv_line: int | None) -> list[Problem]:
    if array.shape != IMAGE_SHAPE:
        return [Problem("format", f"{ref}: size {array.shape[0]}x{array.shape[1]} "
                                  f"(rows x cols), expected {HEIGHT}x{WIDTH}")]
    if not is_mask:
        return []
    bad = np.setdiff1d(np.unique(array), [0, 255])
    if bad.size:
        return [Problem("mask", f"{ref}: mask holds values other than 0 and 255: "
                                f"{bad[:5].tolist()}")]
    if expected_rle is None:
        return []
    # Here, not at the top: rle imports JAX, and `import nerve_jax` (which registers the TFDS
    # builder, which reads this module) must not.
    from nerve_jax import rle

    try:
        expected = rle.decode(expected_rle, IMAGE_SHAPE)
    except ValueError as e:
        return [Problem("csv", f"{TRAIN_MASKS_CSV} line {csv_line}: malformed RLE for "
                               f"{posixpath.basename(str(ref))} ({e})")]
    differ = int(np.count_nonzero(expected != (array > 0)))
    if differ:
        return [Problem("csv", f"{ref}: differs from its {TRAIN_MASKS_CSV} row (line "
                               f"{csv_line}) in {differ} pixels ({int((array > 0).sum())} in "
                               f"the mask, {int(expected.sum())} in the RLE)")]
    return []


def default_workers(workers: int = 0) -> int:
    """`workers`, or one thread per core when it is 0."""
    return workers or os.cpu_count() or 1


def _check_files(jobs: list[tuple], workers: int, progress: Callable | None = None
                 ) -> list[Problem]:
    # Pillow releases the GIL while decoding, so threads use every core.
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda job: check_image(*job), jobs)
        if progress is not None:
            results = progress(results, total=len(jobs))
        return [problem for found in results for problem in found]


# --- CSV files --------------------------------------------------------------------------------

def _csv_rows(path: str, header: Sequence[str]) -> tuple[list[tuple[int, list[str]]],
                                                          list[Problem]]:
    """[(line number, fields)] after a checked header; problems for bad header or widths."""
    with fileio.open(path, newline="") as f:
        rows = list(csv.reader(f))
    name = fileio.basename(path)
    if not rows or [c.strip() for c in rows[0]] != list(header):
        found = ",".join(rows[0]) if rows else "an empty file"
        return [], [Problem("csv", f"{path}: header must be {','.join(header)}, got {found!r}")]
    good, problems = [], []
    for line, fields in enumerate(rows[1:], start=2):
        if len(fields) != len(header):
            problems.append(Problem("csv", f"{name} line {line}: {len(fields)} fields, "
                                           f"expected {len(header)}"))
        else:
            good.append((line, fields))
    return good, problems


def _whole_number(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def read_train_masks_csv(path: str) -> tuple[dict[tuple[int, int], tuple[int, str]],
                                             list[Problem]]:
    """{(subject, frame): (line, RLE)} from train_masks.csv, and its problems."""
    rows, problems = _csv_rows(path, ("subject", "img", "pixels"))
    name = fileio.basename(path)
    found = {}
    for line, (subject, frame, pixels) in rows:
        key = (_whole_number(subject), _whole_number(frame))
        if None in key:
            problems.append(Problem("csv", f"{name} line {line}: subject {subject!r} and img "
                                           f"{frame!r} must be whole numbers"))
        elif key in found:
            problems.append(Problem("csv", f"{name} line {line}: {key[0]}_{key[1]} already "
                                           f"has a row (line {found[key][0]})"))
        else:
            found[key] = (line, pixels)
    return found, problems


def check_train_rows(rows: dict, pairs: list[TrainPair], csv_path: str) -> list[Problem]:
    """Rows missing for a training pair, and rows naming a frame that is not there."""
    name = fileio.basename(csv_path)
    keys = {(p.subject, p.frame) for p in pairs}
    problems = [Problem("csv", f"{p.image_path}: no row in {name}")
                for p in pairs if (p.subject, p.frame) not in rows]
    problems += [Problem("csv", f"{name} line {rows[k][0]}: {k[0]}_{k[1]} has no image "
                                "and mask in the training data")
                 for k in sorted(rows.keys() - keys)]
    return problems


def check_sample_submission(path: str, tests: list[TestImage]) -> list[Problem]:
    """sample_submission.csv must list each test id once, and only those."""
    rows, problems = _csv_rows(path, ("img", "pixels"))
    name = fileio.basename(path)
    seen = {}
    for line, (img, _) in rows:
        image_id = _whole_number(img)
        if image_id is None:
            problems.append(Problem("csv", f"{name} line {line}: img {img!r} is not a whole "
                                           "number"))
        elif image_id in seen:
            problems.append(Problem("csv", f"{name} line {line}: id {image_id} already on "
                                           f"line {seen[image_id]}"))
        else:
            seen[image_id] = line
    ids = {t.id for t in tests}
    problems += [Problem("csv", f"{t.path}: no row in {name}") for t in tests if t.id not in seen]
    problems += [Problem("csv", f"{name} line {seen[i]}: id {i} has no test image")
                 for i in sorted(seen.keys() - ids)]
    return problems


# --- The whole download -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Download:
    """What a checked Kaggle folder holds. `train` / `test` are the folder or zip they came from."""

    kaggle_dir: str
    train: str
    test: str | None
    pairs: list[TrainPair]
    tests: list[TestImage]
    # {(subject, frame): (line, RLE)} of train_masks.csv; None without the file.
    rows: dict | None = None

    def read_pair(self, pair: TrainPair) -> tuple[np.ndarray | None, np.ndarray | None,
                                                  list[Problem]]:
        """(image, mask) of a pair, each checked as `inspect` checks it; (None, None,
        problems) when either has any."""
        line, pixels = mask_row(self.rows, pair)
        image, problems = read_checked(pair.image_path)
        mask, found = read_checked(pair.mask_path, True, pixels, line)
        problems += found
        return (None, None, problems) if problems else (image, mask, [])


def mask_row(rows: dict | None, pair: TrainPair) -> tuple[int | None, str | None]:
    """(line, RLE) of a pair's train_masks.csv row; (None, None) without one."""
    return (rows or {}).get((pair.subject, pair.frame), (None, None))


def _train_jobs(pairs: list[TrainPair], rows: dict | None) -> list[tuple]:
    jobs = [(p.image_path, False) for p in pairs]
    for p in pairs:
        line, pixels = mask_row(rows, p)
        jobs.append((p.mask_path, True, pixels, line))
    return jobs


def inspect(kaggle_dir: str, *, with_test: bool = True, workers: int = 0,
            progress: Callable | None = None,
            decode: bool = True) -> tuple[Download | None, list[Problem]]:
    """Every problem in a Kaggle download, found in one pass over its files.

    Lists and pairs the files of train/ (or train.zip) and, with `with_test`, test/ (or
    test.zip); decodes every TIFF; checks sizes, bit depth, channels and mask values; and
    cross-checks each mask against its train_masks.csv row and the test ids against
    sample_submission.csv when those files exist. Returns (Download, problems); the Download
    is None when the training data could not be listed. With `decode` False the TIFFs are
    left for the caller, who checks each as it reads it (`Download.read_pair`, `read_checked`).
    """
    if not fileio.isdir(kaggle_dir):
        return None, [Problem("missing", f"{kaggle_dir}: Kaggle data folder not found")]
    train = locate(kaggle_dir, "train")
    test = locate(kaggle_dir, "test") if with_test else None
    if train is None:
        return None, [Problem("missing", f"{fileio.join(kaggle_dir, 'train')}: training "
                                         "folder not found (nor train.zip)")]
    try:
        pairs, problems = pair_train_files(train)
        tests, found = list_test_files(test) if test else ([], [])
    except DataError as e:
        return None, [Problem("unreadable", str(e))]
    problems += found
    if not pairs and not problems:
        problems.append(Problem("missing", f"{train}: no <subject>_<frame>.tif images found"))
    if test and not tests and not found:
        problems.append(Problem("missing", f"{test}: no <id>.tif images found"))

    rows = None
    if fileio.isfile(csv_path := fileio.join(kaggle_dir, TRAIN_MASKS_CSV)):
        rows, found = read_train_masks_csv(csv_path)
        problems += found + check_train_rows(rows, pairs, csv_path)
    if tests and fileio.isfile(csv_path := fileio.join(kaggle_dir, SAMPLE_SUBMISSION_CSV)):
        problems += check_sample_submission(csv_path, tests)
    if decode:
        jobs = _train_jobs(pairs, rows) + [(t.path, False) for t in tests]
        problems += _check_files(jobs, default_workers(workers), progress)
    return Download(kaggle_dir, train, test, pairs, tests, rows), problems


def check_download(kaggle_dir: str, **kwargs) -> Download:
    """`inspect`, raising DataError listing every problem (grouped) unless there are none."""
    download, problems = inspect(kaggle_dir, **kwargs)
    if problems:
        raise DataError(f"{kaggle_dir}: {len(problems)} problem(s) in the Kaggle data",
                        problems)
    return download


def scan_train(kaggle_dir: str, workers: int = 0) -> list[TrainPair]:
    """The checked training pairs of a Kaggle folder (train/ or train.zip, cross-checked with
    train_masks.csv when present); raises DataError listing every problem found."""
    return check_download(kaggle_dir, with_test=False, workers=workers).pairs


def scan_test(source: str, workers: int = 0) -> list[TestImage]:
    """The checked `<id>.tif` test images of a folder or zip, sorted by id; raises DataError
    listing every problem."""
    if not (fileio.isdir(source) or (source.lower().endswith(".zip")
                                         and fileio.isfile(source))):
        raise DataError(f"{source}: test folder not found")
    images, problems = list_test_files(source)
    if not images and not problems:
        problems.append(Problem("missing", f"{source}: no <id>.tif images found"))
    problems += _check_files([(im.path, False) for im in images], default_workers(workers))
    if problems:
        raise DataError(f"{source}: {len(problems)} problem(s) in the test images", problems)
    return images
