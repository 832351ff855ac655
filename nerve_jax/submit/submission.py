"""Kaggle submission CSV: header `img,pixels`, one row per test id, `pixels` = the mask's RLE.

`write` produces a file atomically (never half-written); `validate` reads one back and lists
every problem it finds, each with its 1-based line number, so a user fixes them all at once.
"""

import dataclasses
import os
from collections.abc import Iterable, Sequence

import numpy as np

from nerve_jax import fileio
from nerve_jax.atomic import atomic_open
from nerve_jax.rle import encode, parse_runs

HEADER = "img,pixels"
# Masks whose every pixel index lies below this share of H*W look encoded on a smaller grid.
DOWNSCALED_FRACTION = 0.25
MAX_EXAMPLES = 5


def _as_id(value: object) -> int:
    """An int, NumPy integer or decimal string -> int; ValueError otherwise."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"id {value!r} is not a non-negative integer")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"id {value!r} is not an integer")
    return int(value)


def _row_text(img: int, value: str | np.ndarray, shape: tuple[int, int]) -> str:
    """One row's `pixels` field: an RLE string (checked) or a [H, W] mask (encoded)."""
    if isinstance(value, str):
        try:
            parse_runs(value, shape)
        except ValueError as e:
            raise ValueError(f"id {img}: invalid RLE: {e}") from None
        return " ".join(value.split())
    mask = np.asarray(value)
    if mask.shape != tuple(shape):
        raise ValueError(f"id {img}: mask has shape {mask.shape}, expected {tuple(shape)}")
    return encode(mask)


def write(
    path: str | os.PathLike,
    ids: Sequence[int | str],
    masks_or_rles: Sequence[str | np.ndarray],
    shape: tuple[int, int] = (420, 580),
) -> None:
    """Writes a submission: header `img,pixels`, rows sorted by numeric id, `\\n` line endings.

    Each value is an RLE string or a [H, W] mask (bool, 0/1 or 0/255) encoded here.
    Raises ValueError on a length mismatch, duplicate or non-integer ids, or a mask of the
    wrong shape / invalid RLE (naming the id); an existing file at `path` is then untouched.
    """
    if len(ids) != len(masks_or_rles):
        raise ValueError(f"{len(ids)} ids but {len(masks_or_rles)} masks/RLE strings")
    numeric = [_as_id(i) for i in ids]
    first: dict[int, int] = {}
    duplicates = sorted({i for n, i in enumerate(numeric) if first.setdefault(i, n) != n})
    if duplicates:
        raise ValueError(f"duplicate ids: {_examples(duplicates)}")
    order = sorted(range(len(numeric)), key=numeric.__getitem__)
    # Encoding happens while writing, so a bad mask aborts atomic_open and leaves no file.
    with atomic_open(path, "w", newline="") as f:
        f.write(HEADER + "\n")
        for n in order:
            f.write(f"{numeric[n]},{_row_text(numeric[n], masks_or_rles[n], shape)}\n")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding in a submission file; `line` is 1-based, None when it concerns no line."""

    line: int | None
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = "" if self.line is None else f"line {self.line}: "
        return f"{where}{'warning: ' if self.warning else ''}{self.message}"


def problems_are_fatal(problems: Iterable[Problem]) -> bool:
    """True when any problem is an error rather than a warning."""
    return any(not p.warning for p in problems)


def _examples(values: Sequence[object]) -> str:
    """'4, 17, 99' or '4, 17, 99, 120, 121, ... (37 more)' for long lists."""
    shown = ", ".join(str(v) for v in values[:MAX_EXAMPLES])
    extra = len(values) - MAX_EXAMPLES
    return shown + (f", ... ({extra} more)" if extra > 0 else "")


def _read_text(path: str | os.PathLike) -> tuple[str | None, list[Problem]]:
    """File -> (text, problems); text is None when the file cannot be read at all.

    Bytes that are not UTF-8 are reported with their line and replaced, so the rest of the
    file is still checked.
    """
    try:
        data = fileio.read_bytes(path)
    except FileNotFoundError:
        return None, [Problem(None, f"{os.fspath(path)}: file not found")]
    except OSError as e:
        return None, [Problem(None, f"{os.fspath(path)}: unreadable ({e.strerror or e})")]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        problem = Problem(line, f"bytes that are not UTF-8 text ({e.reason})")
        return data.decode("utf-8", errors="replace"), [problem]


def _split_lines(text: str) -> list[str]:
    """Text -> lines without terminators; accepts `\\n`, `\\r\\n` and `\\r\\r\\n` endings."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the file ends with a newline
    return [line.rstrip("\r") for line in lines]


def _check_header(line: str) -> tuple[list[Problem], bool]:
    """First line -> (problems, whether it is a data row to be checked as such)."""
    if line == HEADER:
        return [], False
    if line == "\ufeff" + HEADER:
        return [Problem(1, f"header {HEADER!r} is preceded by a UTF-8 byte-order mark")], False
    if line.split(",", 1)[0].isdigit():
        return [Problem(1, f"missing header {HEADER!r}; the file starts with a data row")], True
    return [Problem(1, f"header is {line!r}, expected exactly {HEADER!r}")], False


def _check_id_sets(seen: dict[int, int], expected_ids: Iterable[int | str] | None) -> list[Problem]:
    """Missing and extra ids versus the expected set, summarised with a few examples."""
    if expected_ids is None:
        return []
    expected = {_as_id(i) for i in expected_ids}
    problems = []
    missing = sorted(expected - seen.keys())
    if missing:
        problems.append(Problem(None, f"missing {len(missing)} ids: {_examples(missing)}"))
    extra = sorted(seen.keys() - expected, key=seen.__getitem__)
    if extra:
        where = [f"{i} (line {seen[i]})" for i in extra]
        message = f"{len(extra)} ids not expected: {_examples(where)}"
        problems.append(Problem(seen[extra[0]], message))
    return problems


def _downscaled_warning(max_pixel: int, shape: tuple[int, int]) -> list[Problem]:
    """A warning when every pixel index of the non-empty masks sits far below H*W."""
    height, width = shape
    if 0 < max_pixel < DOWNSCALED_FRACTION * height * width:
        message = (
            f"every pixel index is at most {max_pixel}, far below {height * width} "
            f"({height}x{width}); were the masks encoded on a downscaled grid?"
        )
        return [Problem(None, message, warning=True)]
    return []


def validate(
    path: str | os.PathLike,
    expected_ids: Iterable[int | str] | None = None,
    shape: tuple[int, int] = (420, 580),
) -> list[Problem]:
    """Checks a submission file; returns every problem found ([] when it is clean).

    Errors: file missing/unreadable/empty, header not exactly `img,pixels`, a row without
    exactly 2 fields, a non-integer or duplicate id, malformed RLE or pixels past H*W (with
    `decode`'s message), and ids missing from / not in `expected_ids` when given. Warning:
    non-empty masks whose pixel indices all lie below a quarter of H*W (downscaled grid).
    """
    text, problems = _read_text(path)
    if text is None:
        return problems
    lines = _split_lines(text)
    if not lines:
        return problems + [Problem(None, f"{os.fspath(path)}: empty file")]
    header_problems, first_is_row = _check_header(lines[0])
    problems += header_problems
    seen: dict[int, int] = {}
    max_pixel = 0
    for number, line in enumerate(lines, start=1):
        if number == 1 and not first_is_row:
            continue
        fields = line.split(",")
        if line.strip() == "":
            problems.append(Problem(number, "empty line"))
            continue
        if len(fields) != 2:
            message = f"expected 2 fields (img,pixels), got {len(fields)}: {line[:60]!r}"
            problems.append(Problem(number, message))
            continue
        img, pixels = fields
        if not (img.isascii() and img.isdigit()):
            problems.append(Problem(number, f"id {img!r} is not an integer"))
        elif int(img) in seen:
            message = f"duplicate id {int(img)} (first on line {seen[int(img)]})"
            problems.append(Problem(number, message))
        else:
            seen[int(img)] = number
        try:
            starts, lengths = parse_runs(pixels, shape)
        except ValueError as e:
            problems.append(Problem(number, f"id {img}: bad RLE: {e}"))
            continue
        if len(starts):
            max_pixel = max(max_pixel, int(starts[-1] + lengths[-1] - 1))
    return problems + _check_id_sets(seen, expected_ids) + _downscaled_warning(max_pixel, shape)
