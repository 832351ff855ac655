"""Where the notebook's data comes from: each missing piece (Kaggle token, accepted rules,
mounted Drive, the download itself) is a UserError saying what to do."""

import os
import shutil

import pytest
import requests

from nerve_jax.data import kaggle, sources
from nerve_jax.errors import UserError


@pytest.fixture
def no_kaggle_token(tmp_path, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle_config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def kaggle_token(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef0123456789abcdef")


def test_no_kaggle_token_says_where_the_token_goes(no_kaggle_token):
    assert not sources.has_kaggle_token()
    with pytest.raises(UserError, match=r"no Kaggle API token found: .*kaggle.json.*secrets"):
        sources.competition_download()


def _refused(status):
    def download(*args, **kwargs):
        response = requests.Response()
        response.status_code = status
        raise requests.HTTPError(f"{status} Client Error", response=response)
    return download


@pytest.mark.parametrize("status, message", [
    (403, r"accept the competition rules at https://www.kaggle.com/competitions/"
          r"ultrasound-nerve-segmentation/rules"),
    (401, r"did not accept the API token")])
def test_kaggle_refusals_are_explained(kaggle_token, monkeypatch, status, message):
    import kagglehub

    assert sources.has_kaggle_token()
    monkeypatch.setattr(kagglehub, "competition_download", _refused(status))
    with pytest.raises(UserError, match=message):
        sources.competition_download()


def test_a_drive_that_is_not_mounted_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DRIVE_ROOT", str(tmp_path / "drive"))
    path = str(tmp_path / "drive" / "MyDrive" / "nerve")
    with pytest.raises(UserError, match=r"Google Drive is not mounted at .*drive\.mount"):
        sources.drive_folder(path)
    os.makedirs(tmp_path / "drive" / "MyDrive")
    with pytest.raises(UserError, match=rf"{path}: folder not found; put train.zip"):
        sources.drive_folder(path)


def test_the_download_is_found_in_its_folder_or_one_below(tiny_kaggle_dir, tmp_path):
    assert sources.kaggle_folder(tiny_kaggle_dir) == tiny_kaggle_dir
    nested = tmp_path / "download" / "ultrasound-nerve-segmentation"
    shutil.copytree(tiny_kaggle_dir, nested)
    assert sources.kaggle_folder(str(tmp_path / "download")) == str(nested)
    assert kaggle.locate(str(nested), "train")
    with pytest.raises(UserError, match="holds neither train.zip nor train/"):
        sources.kaggle_folder(str(tmp_path))


def test_auto_falls_back_to_synthetic_data_and_says_why(no_kaggle_token, tmp_path, capsys):
    out = str(tmp_path / "synthetic")
    folder = sources.choose("auto", str(tmp_path / "no_such_drive_folder"), out,
                            num_subjects=2, frames_per_subject=3, num_test=2)
    assert folder == out and kaggle.locate(out, "train")
    assert "no Kaggle API token: synthetic data" in capsys.readouterr().out
    with pytest.raises(UserError, match="choose auto, kaggle, drive or synthetic"):
        sources.choose("s3", "", out)
