"""The Kaggle download as shipped (zips or folders): validate-data, build, the TFDS builder."""

import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import nerve_jax  # noqa: F401  (registers the builder)
from nerve_jax import cli, rle
from nerve_jax.data import kaggle, tfds_builder
from nerve_jax.errors import DataError

DUMMY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dummy_data", "ultrasound_nerve")


class UltrasoundNerveTest(tfds.testing.DatasetBuilderTestCase):
    """TFDS's own checks of the builder on tests/dummy_data (zips and CSVs, as shipped)."""

    DATASET_CLASS = tfds_builder.UltrasoundNerve
    EXAMPLE_DIR = DUMMY
    SPLITS = {"train": 4, "test": 2}
    SKIP_CHECKSUMS = True


def _unzipped(tmp_path):
    out = tmp_path / "unzipped"
    out.mkdir()
    for name in ("train.zip", "test.zip"):
        with zipfile.ZipFile(os.path.join(DUMMY, name)) as z:
            z.extractall(out)
    for name in (kaggle.TRAIN_MASKS_CSV, kaggle.SAMPLE_SUBMISSION_CSV):
        shutil.copy(os.path.join(DUMMY, name), out / name)
    return out


def _as_arrays(builder, split):
    return sorted(((int(ex["subject"]), int(ex["frame"]), int(ex["id"])), ex["image"], ex["mask"])
                  for ex in tfds.as_numpy(builder.as_dataset(split=split)))


def test_zips_and_folders_build_the_same_records(tmp_path):
    from_zips = tfds_builder.prepare(DUMMY, str(tmp_path / "a"))
    from_folders = tfds_builder.prepare(str(_unzipped(tmp_path)), str(tmp_path / "b"))
    for split in ("train", "test"):
        a, b = _as_arrays(from_zips, split), _as_arrays(from_folders, split)
        assert [x[0] for x in a] == [x[0] for x in b]
        for (_, image_a, mask_a), (_, image_b, mask_b) in zip(a, b, strict=True):
            np.testing.assert_array_equal(image_a, image_b)
            np.testing.assert_array_equal(mask_a, mask_b)
    train = _as_arrays(from_zips, "train")
    assert train[0][1].shape == (420, 580, 1) and train[0][1].dtype == np.uint8
    assert {int(v) for _, _, m in train for v in np.unique(m)} == {0, 1}
    truth = kaggle.read_tiff(kaggle.member_ref(os.path.join(DUMMY, "train.zip"),
                                               "train/1_1_mask.tif"))
    np.testing.assert_array_equal(train[0][2][..., 0], truth // 255)


def test_import_registers_the_builder_for_tfds_load(tmp_path):
    tfds_builder.prepare(DUMMY, str(tmp_path))
    ds = tfds.load("ultrasound_nerve", split="test", data_dir=str(tmp_path))
    assert sorted(int(ex["id"]) for ex in tfds.as_numpy(ds)) == [1, 2]


@pytest.mark.slow
def test_tfds_build_command(tmp_path):
    """What `tfds build ultrasound_nerve --imports nerve_jax --manual_dir DIR` runs. (In
    tensorflow-datasets 4.9.10 the `tfds` launcher itself also imports apache_beam, which this
    project does not install, so the build subcommand is called directly.)"""
    code = ("import simple_parsing, sys\n"
            "from tensorflow_datasets.scripts.cli import build\n"
            "simple_parsing.parse(build.Args, args=sys.argv[1:]).execute()\n")
    result = subprocess.run(
        [sys.executable, "-c", code, "ultrasound_nerve", "--imports", "nerve_jax",
         "--manual_dir", DUMMY, "--data_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    builder = tfds.builder("ultrasound_nerve", data_dir=str(tmp_path))
    assert builder.info.splits["train"].num_examples == 4


def _messy_download(tmp_path):
    """The unzipped dummy download with one problem of every kind."""
    root = _unzipped(tmp_path)
    train, test = root / "train", root / "test"
    rgb = np.zeros((420, 580, 3), np.uint8)
    Image.fromarray(rgb).save(train / "3_1.tif", compression="tiff_lzw")  # 3 channels
    kaggle.write_tiff(train / "3_1_mask.tif", np.zeros((420, 580), np.uint8))
    Image.fromarray(np.zeros((420, 580), np.uint16)).save(train / "3_2.tif")  # 16-bit
    kaggle.write_tiff(train / "3_2_mask.tif", np.zeros((420, 580), np.uint8))
    shutil.copy(train / "1_1.tif", train / "01_1.tif")  # duplicate id
    shutil.copy(test / "1.tif", test / "001.tif")  # duplicate test id
    kaggle.write_tiff(train / "4_1.tif", np.zeros((420, 580), np.uint8))  # unpaired
    data = (train / "2_2.tif").read_bytes()
    (train / "2_2.tif").write_bytes(data[: len(data) // 2])  # truncated
    kaggle.write_tiff(train / "5_1.tif", np.zeros((400, 580), np.uint8))  # wrong size
    bad = np.zeros((420, 580), np.uint8)
    bad[:5, :5] = 7
    kaggle.write_tiff(train / "5_1_mask.tif", bad)  # bad values
    (test / "scan.tif").write_bytes(b"x")  # bad name
    lines = (root / kaggle.TRAIN_MASKS_CSV).read_text().splitlines()
    lines[1] = "1,1,1 10"  # disagrees with 1_1_mask.tif
    lines.append("9,9,")  # extra row
    (root / kaggle.TRAIN_MASKS_CSV).write_text("\n".join(lines) + "\n")
    (root / kaggle.SAMPLE_SUBMISSION_CSV).write_text("img,pixels\n1,1 1\n7,1 1\n")
    return root


def test_validate_data_lists_every_problem_grouped(tmp_path, capsys):
    root = _messy_download(tmp_path)
    code = cli.main(["validate-data", "--kaggle-dir", str(root), "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    expected = {
        "file names not in Kaggle form (1)": ["scan.tif: name is not <id>.tif"],
        "duplicate ids (2)": ["train/1_1.tif: same id as", "train/01_1.tif",
                              "test/1.tif: same id as", "test/001.tif"],
        "images or masks without their partner (1)": ["4_1.tif: image without its mask"],
        "unreadable or truncated TIFFs (1)": ["2_2.tif: unreadable or truncated TIFF"],
        "wrong size, bit depth or channel count (3)": [
            "3_1.tif: expected an 8-bit single-channel image, got mode 'RGB'",
            "3_2.tif: expected an 8-bit single-channel image, got mode 'I;16'",
            "5_1.tif: size 400x580"],
        "masks with values other than 0 and 255 (1)": ["5_1_mask.tif: mask holds values"],
    }
    for heading, messages in expected.items():
        assert heading in out, out
        for message in messages:
            assert message in out, out
    for message in ["1_1_mask.tif: differs from its train_masks.csv row (line 2) in",
                    "3_1.tif: no row in train_masks.csv",
                    "train_masks.csv line 6: 9_9 has no image and mask",
                    "2.tif: no row in sample_submission.csv",
                    "sample_submission.csv line 3: id 7 has no test image"]:
        assert message in out, out
    assert "Traceback" not in out


def test_validate_data_passes_a_clean_download(capsys):
    assert cli.main(["validate-data", "--kaggle-dir", DUMMY, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "4 training pairs" in out and "2 test images" in out and "no problems found" in out


def test_csv_mismatch_names_the_image(tmp_path):
    root = _unzipped(tmp_path)
    mask = kaggle.read_tiff(root / "train" / "2_1_mask.tif") > 0
    shifted = np.roll(mask, 3, axis=1)
    lines = (root / kaggle.TRAIN_MASKS_CSV).read_text().splitlines()
    lines[3] = f"2,1,{rle.encode(shifted)}"
    (root / kaggle.TRAIN_MASKS_CSV).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        kaggle.scan_train(str(root))
    assert len(info.value.problems) == 1
    assert "2_1_mask.tif: differs from its train_masks.csv row (line 4)" in info.value.problems[0]


def test_build_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    root = _messy_download(tmp_path)
    out = tmp_path / "tfds"
    code = cli.main(["build", "--kaggle-dir", str(root), "--tfds-data-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "2_2.tif: unreadable or truncated TIFF" in err and "Traceback" not in err
    assert tfds_builder.source_builds(str(out)) == []


def test_build_command_from_zips(tmp_path, capsys):
    assert cli.main(["build", "--kaggle-dir", DUMMY, "--tfds-data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ultrasound_nerve train: 4 examples" in out
    assert "ultrasound_nerve test: 2 examples" in out


def test_readers_name_zip_members(tmp_path):
    archive = os.path.join(DUMMY, "train.zip")
    with pytest.raises(DataError, match=r"train\.zip::train/9_9\.tif: no such member"):
        kaggle.read_tiff(kaggle.member_ref(archive, "train/9_9.tif"))
    pairs, problems = kaggle.pair_train_files(archive)
    assert [p.name for p in pairs] == ["1_1", "1_2", "2_1", "2_2"] and problems == []
    assert kaggle.read_tiff(pairs[0].image_path).shape == (420, 580)


def test_eda_reads_the_zipped_download(tmp_path):
    from nerve_jax.data import eda

    stats = eda.write_report(DUMMY, str(tmp_path / "report"), progress=False, max_samples=2)
    assert stats["counts"]["train_pairs"] == 4 and stats["counts"]["test_images"] == 2
    assert (tmp_path / "report" / "index.html").exists()
    assert oct((tmp_path / "report" / "index.html").stat().st_mode & 0o777) != oct(0o600)
