"""Where the TFDS dataset lives (one rule for build and train), and what a built one records."""

import os

import pytest

from nerve_jax import cli, config_util, train
from nerve_jax.data import synthetic, tfds_builder
from nerve_jax.errors import UserError


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


@pytest.mark.slow
def test_build_then_train_use_one_dataset(test_config, tiny_kaggle_dir, tmp_path,
                                          tfds_default_dir, capsys):
    assert cli.main(["build", "--kaggle-dir", tiny_kaggle_dir]) == 0
    assert f"TFDS data: {tfds_default_dir}" in capsys.readouterr().out
    config = test_config()
    config.kaggle_dir = tiny_kaggle_dir
    workdir = str(tmp_path / "work")
    builder = train.prepare_data(config_util.checked(config), workdir)
    assert builder.data_dir.startswith(tfds_default_dir)
    assert not os.path.exists(os.path.join(workdir, "tfds"))
    source = builder.info.metadata[tfds_builder.SOURCE_KEY]
    assert source["kaggle_dir"] == os.path.abspath(tiny_kaggle_dir)


@pytest.mark.slow
def test_a_dataset_built_from_other_files_is_refused(tiny_kaggle_dir, tmp_path):
    other = str(tmp_path / "other")
    synthetic.generate(other, num_subjects=2, frames_per_subject=3, num_test=1, seed=5)
    data_dir = str(tmp_path / "tfds")
    tfds_builder.prepare(tiny_kaggle_dir, data_dir)
    with pytest.raises(UserError, match=rf"built from {tiny_kaggle_dir}, whose files differ "
                                        rf"from those in {other}"):
        tfds_builder.prepare(other, data_dir)
    assert tfds_builder.prepare(tiny_kaggle_dir, data_dir).info.splits["train"].num_examples == 24


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
