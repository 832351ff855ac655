"""Bad input stops before training, with an error naming the file and the problem."""

import os

import numpy as np
import pytest

from nerve_jax import cli
from nerve_jax.data import kaggle
from nerve_jax.errors import DataError


def _write_pair(train_dir, subject, frame, image=None, mask=None):
    image = np.full((420, 580), 100, np.uint8) if image is None else image
    if mask is None:
        mask = np.zeros((420, 580), np.uint8)
        mask[150:200, 300:400] = 255
    kaggle.write_tiff(os.path.join(train_dir, f"{subject}_{frame}.tif"), image)
    kaggle.write_tiff(os.path.join(train_dir, f"{subject}_{frame}_mask.tif"), mask)


@pytest.fixture
def good_dir(tmp_path):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    for subject in (1, 2):
        for frame in (1, 2):
            _write_pair(train_dir, subject, frame)
    return tmp_path


def test_tiff_round_trip_is_lzw(tmp_path):
    from PIL import Image

    array = np.random.default_rng(0).integers(0, 256, (420, 580), dtype=np.uint8)
    kaggle.write_tiff(tmp_path / "a.tif", array)
    with Image.open(tmp_path / "a.tif") as im:
        assert im.info["compression"] == "tiff_lzw"
    np.testing.assert_array_equal(kaggle.read_tiff(tmp_path / "a.tif"), array)


def test_clean_folder_pairs_every_frame(good_dir):
    pairs = kaggle.scan_train(str(good_dir))
    assert [p.name for p in pairs] == ["1_1", "1_2", "2_1", "2_2"]


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        kaggle.scan_train(str(tmp_path / "nowhere"))


def test_every_problem_is_listed_with_its_file(good_dir):
    train_dir = good_dir / "train"
    kaggle.write_tiff(train_dir / "3_1.tif", np.zeros((420, 580), np.uint8))  # no mask
    kaggle.write_tiff(train_dir / "4_1_mask.tif", np.zeros((420, 580), np.uint8))  # no image
    _write_pair(train_dir, 5, 1, image=np.zeros((400, 580), np.uint8))  # wrong size
    bad_mask = np.zeros((420, 580), np.uint8)
    bad_mask[10:20, 10:20] = 128
    _write_pair(train_dir, 6, 1, mask=bad_mask)
    data = (train_dir / "1_1.tif").read_bytes()
    (train_dir / "1_2.tif").write_bytes(data[: len(data) // 3])  # truncated
    (train_dir / "notes.tif").write_bytes(b"x")  # bad name

    with pytest.raises(DataError) as info:
        kaggle.scan_train(str(good_dir))
    problems = "\n".join(info.value.problems)
    assert len(info.value.problems) == 6, problems
    assert "3_1.tif: image without its mask" in problems
    assert "4_1_mask.tif: mask without its image" in problems
    assert "5_1.tif: size 400x580" in problems
    assert "6_1_mask.tif: mask holds values other than 0 and 255: [128]" in problems
    assert "1_2.tif: unreadable or truncated TIFF" in problems
    assert "notes.tif: name is not" in problems


def test_cli_reports_bad_data_without_traceback(good_dir, capsys, tmp_path):
    kaggle.write_tiff(good_dir / "train" / "9_9.tif", np.zeros((420, 580), np.uint8))
    code = cli.main(["train", "--config", os.path.join("configs", "test.py"),
                     "--workdir", str(tmp_path / "work"), f"--config.kaggle_dir={good_dir}"])
    err = capsys.readouterr().err
    assert code != 0
    assert "9_9.tif: image without its mask" in err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "work" / "checkpoints")


def test_cli_reports_missing_kaggle_dir(tmp_path, capsys):
    code = cli.main(["train", "--config", os.path.join("configs", "test.py"),
                     "--workdir", str(tmp_path / "w"), f"--config.kaggle_dir={tmp_path}/none"])
    assert code != 0
    assert "folder not found" in capsys.readouterr().err


def test_test_images_sorted_by_numeric_id(tmp_path):
    for i in (10, 2, 1):
        kaggle.write_tiff(tmp_path / f"{i}.tif", np.zeros((420, 580), np.uint8))
    assert [im.id for im in kaggle.scan_test(str(tmp_path))] == [1, 2, 10]
