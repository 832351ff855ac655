"""Where the TFDS builds live (one rule for build and train), and which build a download gets:
its own, by the fingerprint of its files."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from nerve_jax import cli, config_util
from nerve_jax.data import kaggle, synthetic, tfds_builder
from nerve_jax.errors import DataError, UserError
from nerve_jax.runtime import distributed


def test_the_configured_folder_wins(tmp_path):
    assert tfds_builder.data_dir("/data/tfds", str(tmp_path)) == "/data/tfds"


def test_else_the_workdir_folder_an_earlier_version_built(tmp_path):
    os.makedirs(tmp_path / "tfds" / tfds_builder.NAME)
    assert tfds_builder.data_dir("", str(tmp_path)) == str(tmp_path / "tfds")


def test_else_tfds_default(tmp_path, monkeypatch, tfds_default_dir):
    assert tfds_builder.data_dir("", str(tmp_path)) == tfds_default_dir
    assert tfds_builder.data_dir("") == tfds_default_dir
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert tfds_builder.data_dir("") == os.path.expanduser("~/tensorflow_datasets")


def test_the_fingerprint_follows_content_in_zips_and_times_in_folders(tiny_kaggle_dir, tmp_path):
    dummy = os.path.join(os.path.dirname(__file__), "dummy_data", "ultrasound_nerve")
    copied = tmp_path / "zipped"
    copied.mkdir()
    for name in os.listdir(dummy):
        shutil.copy(os.path.join(dummy, name), copied / name)  # New modification times.
    assert kaggle.fingerprint(str(copied)) == kaggle.fingerprint(dummy)

    folder = str(tmp_path / "unzipped")
    shutil.copytree(tiny_kaggle_dir, folder)  # Keeps the times.
    assert kaggle.fingerprint(folder) == kaggle.fingerprint(tiny_kaggle_dir)
    image = os.path.join(folder, "train", "1_1.tif")
    os.utime(image, ns=(0, os.stat(image).st_mtime_ns + 1))
    assert kaggle.fingerprint(folder) != kaggle.fingerprint(tiny_kaggle_dir)


def _builds_made(monkeypatch) -> list[str]:
    """The config names of the builds started from now on."""
    made = []
    build = tfds_builder.UltrasoundNerve.download_and_prepare

    def counted(self, **kwargs):
        made.append(self.builder_config_name)
        return build(self, **kwargs)

    monkeypatch.setattr(tfds_builder.UltrasoundNerve, "download_and_prepare", counted)
    return made


def _train_images(builder) -> dict[str, np.ndarray]:
    """{"<subject>_<frame>": [H, W] image} of a build's training split."""
    return {f"{ex['subject']}_{ex['frame']}": ex["image"][..., 0]
            for ex in tfds.as_numpy(builder.as_dataset(split="train"))}


def _tiff(kaggle_dir: str, name: str) -> np.ndarray:
    return kaggle.read_tiff(os.path.join(kaggle_dir, "train", name))


@pytest.mark.slow
def test_build_then_train_use_one_dataset(test_config, tiny_kaggle_dir, tmp_path,
                                          tfds_default_dir, capsys):
    assert cli.main(["build", "--kaggle-dir", tiny_kaggle_dir]) == 0
    assert f"TFDS data: {tfds_default_dir}" in capsys.readouterr().out
    config = test_config()
    config.kaggle_dir = tiny_kaggle_dir
    workdir = str(tmp_path / "work")
    builder = tfds_builder.prepare_for(config_util.checked(config), workdir)
    assert builder.data_dir.startswith(tfds_default_dir)
    assert not os.path.exists(os.path.join(workdir, "tfds"))
    source = builder.info.metadata[tfds_builder.SOURCE_KEY]
    assert source["kaggle_dir"] == os.path.abspath(tiny_kaggle_dir)
    assert builder.builder_config_name == tfds_builder.config_name(source["fingerprint"])


@pytest.mark.slow
def test_builds_of_two_downloads_live_side_by_side(tiny_kaggle_dir, tmp_path, monkeypatch):
    other = str(tmp_path / "other")
    synthetic.generate(other, num_subjects=2, frames_per_subject=3, num_test=1, seed=5)
    data_dir = str(tmp_path / "tfds")
    first = tfds_builder.prepare(tiny_kaggle_dir, data_dir)
    second = tfds_builder.prepare(other, data_dir)
    names = sorted([first.builder_config_name, second.builder_config_name])
    assert tfds_builder.source_builds(data_dir) == names and names[0] != names[1]
    for builder, source, frames in ((first, tiny_kaggle_dir, 24), (second, other, 6)):
        images = _train_images(builder)
        assert len(images) == frames
        np.testing.assert_array_equal(images["2_3"], _tiff(source, "2_3.tif"))

    made = _builds_made(monkeypatch)
    again = tfds_builder.prepare(tiny_kaggle_dir, data_dir)
    assert made == [] and again.data_dir == first.data_dir

    # In a user's own code: by config name or folder; the plain name is ambiguous here.
    named = tfds.load(f"{tfds_builder.NAME}/{second.builder_config_name}", split="train",
                      data_dir=data_dir)
    assert int(named.cardinality()) == 6
    assert tfds.builder_from_directory(first.data_dir).info.splits["train"].num_examples == 24
    with pytest.raises(UserError, match=rf"builds of 2 downloads \({names[0]}, {names[1]}\)"):
        tfds.load(tfds_builder.NAME, split="train", data_dir=data_dir)


@pytest.mark.slow
def test_other_processes_open_the_build_process_zero_prepared(tiny_kaggle_dir, tmp_path,
                                                              monkeypatch):
    import jax

    data_dir = str(tmp_path / "tfds")
    built = tfds_builder.prepare(tiny_kaggle_dir, data_dir)
    name = built.builder_config_name
    assert tfds_builder._from_process_zero(name) == name
    said = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(distributed, "run_on_process_zero", lambda what, fn: None)
    monkeypatch.setattr(distributed, "all_agree", lambda ok, message: said.append(ok))
    monkeypatch.setattr(tfds_builder, "_from_process_zero", lambda text: text or name)
    opened = tfds_builder.prepare_on_process_zero(lambda: pytest.fail("process 1 built"),
                                                  data_dir)
    assert opened.data_dir == built.data_dir and said == [True]


@pytest.mark.slow
def test_a_removed_file_is_named_and_the_fixed_download_built_anew(tiny_kaggle_dir, tmp_path,
                                                                   monkeypatch):
    kaggle_dir = str(tmp_path / "kaggle")
    shutil.copytree(tiny_kaggle_dir, kaggle_dir)
    data_dir = str(tmp_path / "tfds")
    first = tfds_builder.prepare(kaggle_dir, data_dir)

    os.remove(os.path.join(kaggle_dir, "train", "1_1_mask.tif"))
    with pytest.raises(DataError, match=r"train/1_1\.tif: image without its mask"):
        tfds_builder.prepare(kaggle_dir, data_dir)
    assert os.listdir(os.path.join(data_dir, tfds_builder.NAME)) == [first.builder_config_name]

    # The fix: frame 1_1 leaves the download, with its train_masks.csv row.
    made = _builds_made(monkeypatch)
    os.remove(os.path.join(kaggle_dir, "train", "1_1.tif"))
    csv = os.path.join(kaggle_dir, kaggle.TRAIN_MASKS_CSV)
    with open(csv) as f:
        rows = [line for line in f if not line.startswith("1,1,")]
    with open(csv, "w") as f:
        f.writelines(rows)
    fixed = tfds_builder.prepare(kaggle_dir, data_dir)
    assert made == [fixed.builder_config_name] != [first.builder_config_name]
    images = _train_images(fixed)
    assert len(images) == 23 and "1_1" not in images
    assert len(_train_images(first)) == 24  # Left as it was, next to it.


@pytest.mark.slow
def test_a_rewritten_image_is_never_read_from_the_old_build(tmp_path):
    kaggle_dir = str(tmp_path / "kaggle")
    synthetic.generate(kaggle_dir, num_subjects=1, frames_per_subject=2, num_test=1, seed=3)
    data_dir = str(tmp_path / "tfds")
    old = tfds_builder.prepare(kaggle_dir, data_dir)
    pixels = 255 - _tiff(kaggle_dir, "1_2.tif")
    kaggle.write_tiff(os.path.join(kaggle_dir, "train", "1_2.tif"), pixels)
    new = tfds_builder.prepare(kaggle_dir, data_dir)
    assert new.builder_config_name != old.builder_config_name
    np.testing.assert_array_equal(_train_images(new)["1_2"], pixels)


@pytest.mark.slow
def test_a_bad_tiff_found_while_building_leaves_nothing(tiny_kaggle_dir, tmp_path):
    import shutil

    kaggle_dir = str(tmp_path / "kaggle")
    shutil.copytree(tiny_kaggle_dir, kaggle_dir)
    image = sorted(f for f in os.listdir(os.path.join(kaggle_dir, "train"))
                   if not f.endswith("_mask.tif"))[-1]
    with open(os.path.join(kaggle_dir, "train", image), "r+b") as f:
        f.truncate(300)
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(UserError, match=rf"1 problem\(s\)(.|\n)*{image}: unreadable or truncated"):
        tfds_builder.prepare(kaggle_dir, data_dir)
    left = [os.path.join(d, f) for d, _, files in os.walk(data_dir) for f in files]
    assert not [f for f in left if tfds_builder.NAME in f], left


@pytest.mark.slow
def test_build_decodes_every_tiff_once(tiny_kaggle_dir, tmp_path, monkeypatch):
    import collections

    from nerve_jax.data import kaggle

    decoded = collections.Counter()
    decode = kaggle._decode_tiff
    monkeypatch.setattr(kaggle, "_decode_tiff", lambda ref: decoded.update([ref]) or decode(ref))
    builder = tfds_builder.prepare(tiny_kaggle_dir, str(tmp_path / "tfds"))
    files = 2 * builder.info.splits["train"].num_examples + builder.info.splits["test"].num_examples
    assert len(decoded) == files == 52
    assert set(decoded.values()) == {1}
