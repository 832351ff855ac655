"""Tests for nerve_jax.submit.submission: writing, atomicity and the validator's findings."""

import os

import numpy as np
import pytest

from nerve_jax import rle
from nerve_jax.submit import submission
from nerve_jax.submit.submission import Problem

H, W = 420, 580


def box_mask(top: int, left: int, size: int = 20) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[top : top + size, left : left + size] = 255
    return mask


def write_bytes(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def errors(problems: list[Problem]) -> list[tuple[int | None, str]]:
    return [(p.line, p.message) for p in problems if not p.warning]


def test_write_then_validate_is_clean(tmp_path):
    path = tmp_path / "sub.csv"
    ids = [3, 1, 2]
    values = [box_mask(100, 300), "", rle.encode(box_mask(200, 250))]
    submission.write(path, ids, values)
    assert submission.validate(path, expected_ids=[1, 2, 3]) == []
    lines = path.read_bytes().decode().split("\n")
    assert lines[0] == "img,pixels" and lines[-1] == "" and "\r" not in path.read_text()
    assert lines[1:4] == ["1,", f"2,{values[2]}", f"3,{rle.encode(values[0])}"]


def test_rows_sorted_numerically(tmp_path):
    path = tmp_path / "sub.csv"
    ids = [10, 9, "100", 1, np.int64(2)]
    submission.write(path, ids, [""] * len(ids))
    rows = path.read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "9", "10", "100"]


@pytest.mark.parametrize(
    ("ids", "values", "match"),
    [
        ([1, 2], [""], "2 ids but 1"),
        ([1, 2, 1], ["", "", ""], "duplicate ids: 1"),
        (["x"], [""], "'x' is not"),
        ([7], ["1 0"], "id 7: invalid RLE: run 1 .* length 0"),
        ([1, 5], ["", np.zeros((64, 80), bool)], r"id 5: mask has shape \(64, 80\)"),
    ],
)
def test_write_rejects_bad_input(tmp_path, ids, values, match):
    with pytest.raises(ValueError, match=match):
        submission.write(tmp_path / "sub.csv", ids, values)
    assert os.listdir(tmp_path) == []


def test_write_is_atomic(tmp_path):
    path = tmp_path / "sub.csv"
    submission.write(path, [1], ["5 5"])
    before = path.read_bytes()
    values = [box_mask(10, 10), np.zeros((H, W - 1), bool), box_mask(50, 50)]
    with pytest.raises(ValueError, match="id 2: mask has shape"):
        submission.write(path, [1, 2, 3], values)  # fails mid-way, after row 1 is written
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["sub.csv"]  # no temporary file left behind


def test_validate_reports_every_problem_with_its_line(tmp_path):
    rows = [
        "img,pixels",  # 1
        "1,1 5",  # 2 fine
        "2,10 3 5 2",  # 3 unsorted
        "1,",  # 4 duplicate of line 2
        "x,",  # 5 non-integer id
        "4,1 2,3",  # 6 three fields
        "5,243600 2",  # 7 past H*W
        "",  # 8 empty line
        "6,7 a",  # 9 non-integer value
        "99,1 1",  # 10 not expected
        "7,1 2 3",  # 11 odd count
    ]
    path = write_bytes(tmp_path / "bad.csv", ("\n".join(rows) + "\n").encode())
    problems = submission.validate(path, expected_ids=range(1, 10))
    found = errors(problems)
    assert [line for line, _ in found] == [3, 4, 5, 6, 7, 8, 9, 11, None, 10]
    messages = dict(found)
    assert "is not after run 1" in messages[3]
    assert messages[4] == "duplicate id 1 (first on line 2)"
    assert "'x' is not an integer" in messages[5]
    assert "expected 2 fields" in messages[6]
    assert "past the last pixel 243600" in messages[7]
    assert messages[8] == "empty line"
    assert "'a'" in messages[9]
    assert "odd number" in messages[11]
    assert messages[None] == "missing 4 ids: 3, 4, 8, 9"  # line 6 names no id reliably
    assert messages[10] == "1 ids not expected: 99 (line 10)"
    assert str(problems[1]) == "line 4: duplicate id 1 (first on line 2)"
    assert submission.problems_are_fatal(problems)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r\r\n"])
@pytest.mark.parametrize("trailing", [True, False])
def test_line_endings_validate_clean(tmp_path, ending, trailing):
    rows = [b"img,pixels", b"1,1 1", b"2,", b"3,243600 1"]
    data = ending.join(rows) + (ending if trailing else b"")
    path = write_bytes(tmp_path / "sub.csv", data)
    assert submission.validate(path, expected_ids=[1, 2, 3]) == []


def test_downscaled_grid_is_a_warning_only(tmp_path):
    small = np.zeros((64, 80), bool)
    small[20:30, 30:50] = True
    path = tmp_path / "sub.csv"
    submission.write(path, [1, 2], [rle.encode(small), ""])
    problems = submission.validate(path)
    assert len(problems) == 1 and problems[0].warning and problems[0].line is None
    assert "downscaled" in str(problems[0]) and str(problems[0]).startswith("warning: ")
    assert not submission.problems_are_fatal(problems)
    assert submission.validate(path, shape=(64, 80)) == []


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty file"),
        (b"img,pixel\n1,\n", "header is 'img,pixel', expected exactly 'img,pixels'"),
        (b"1,1 1\n2,\n", "missing header"),
        (b"img,pixels\n1,\xff\n", "not UTF-8"),
        (b"\xef\xbb\xbfimg,pixels\n1,\n", "byte-order mark"),
    ],
)
def test_file_level_problems(tmp_path, data, match):
    problems = submission.validate(write_bytes(tmp_path / "sub.csv", data))
    assert any(match in p.message for p in problems), problems


def test_missing_file(tmp_path):
    problems = submission.validate(tmp_path / "nope.csv")
    assert len(problems) == 1 and "file not found" in problems[0].message
    assert submission.problems_are_fatal(problems)


def test_many_missing_ids_are_summarised(tmp_path):
    path = tmp_path / "sub.csv"
    submission.write(path, [1], [""])
    (problem,) = submission.validate(path, expected_ids=range(1, 101))
    assert problem.message == "missing 99 ids: 2, 3, 4, 5, 6, ... (94 more)"


def test_validate_accepts_a_full_size_submission(tmp_path):
    path = tmp_path / "sub.csv"
    ids = list(range(1, 5509))
    values = [rle.encode(box_mask(100 + i % 50, 300, 80)) if i % 5 < 2 else "" for i in ids]
    submission.write(path, ids, values)
    assert submission.validate(path, expected_ids=ids) == []


def test_cli_check_submission_lists_problems_and_exits_1(tmp_path, capsys):
    from nerve_jax import cli
    from nerve_jax.data import kaggle

    test_dir = tmp_path / "test"
    test_dir.mkdir()
    for i in (1, 2, 3):
        kaggle.write_tiff(test_dir / f"{i}.tif", np.zeros((420, 580), np.uint8))
    path = tmp_path / "sub.csv"
    path.write_text("img,pixels\n1,1 5\n1,\n2,5 2 3 1\n")
    assert cli.main(["check-submission", str(path), "--test-dir", str(test_dir)]) == 1
    out = capsys.readouterr().out
    assert "line 3: duplicate id 1" in out
    assert "line 4:" in out and "missing" in out and "INVALID" in out

    path.write_text("img,pixels\r\n1,\r\n2,1 10\r\n3,\r\n")
    assert cli.main(["check-submission", str(path), "--test-dir", str(test_dir)]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "valid" in out


def test_a_wrong_header_is_one_problem_and_not_a_data_row(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text("image,pixels\n1,\n2,150001 3\n")
    (problem,) = submission.validate(path, expected_ids=[1, 2])
    assert problem.message == "header is 'image,pixels', expected exactly 'img,pixels'"


def test_exactly_max_examples_missing_ids_are_listed_without_more(tmp_path):
    path = tmp_path / "sub.csv"
    submission.write(path, [1], [""])
    (problem,) = submission.validate(path, expected_ids=range(1, 2 + submission.MAX_EXAMPLES))
    assert problem.message == "missing 5 ids: 2, 3, 4, 5, 6"


def test_an_unreadable_path_is_named(tmp_path):
    (problem,) = submission.validate(tmp_path, expected_ids=[1])
    assert problem.message.startswith(f"{tmp_path}: unreadable")
