"""Where a notebook or a fresh machine gets the Kaggle download: the competition itself
(kagglehub, with the user's API token), a Google Drive folder holding train.zip / test.zip, or
`nerve-jax synth`. Each returns a folder that `kaggle_dir` can name, or raises UserError saying
what to do."""

import os

from nerve_jax import fileio
from nerve_jax.data import kaggle, synthetic
from nerve_jax.errors import UserError

COMPETITION = "ultrasound-nerve-segmentation"
RULES_URL = f"https://www.kaggle.com/competitions/{COMPETITION}/rules"
DRIVE_ROOT = "/content/drive"
TOKEN_HELP = (
    "create a token at https://www.kaggle.com/settings (API > Create New Token) and either put "
    "kaggle.json in ~/.kaggle/, set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or, "
    "on Colab, add them as notebook secrets (the key icon in the left bar)")


def _kagglehub():
    try:
        import kagglehub
    except ImportError:
        raise UserError("the kagglehub package is not installed (Colab has it): "
                        "pip install kagglehub") from None
    return kagglehub


def competition_download(output_dir: str | None = None) -> str:
    """The competition's files (train.zip, test.zip, the CSVs), downloaded once by kagglehub
    into its cache or `output_dir`; the folder holding them."""
    kagglehub = _kagglehub()
    from kagglehub import config

    if config.get_kaggle_credentials() is None:
        raise UserError(f"no Kaggle API token found: {TOKEN_HELP}")
    try:
        path = kagglehub.competition_download(COMPETITION, output_dir=output_dir)
    except Exception as e:  # kagglehub raises requests' HTTPError subclasses and its own.
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 403:
            raise UserError(f"Kaggle refused the download (403): accept the competition rules "
                            f"at {RULES_URL} with the account of your token, then rerun") \
                from None
        if status == 401:
            raise UserError(f"Kaggle did not accept the API token (401): {TOKEN_HELP}") from None
        raise UserError(f"the Kaggle download failed ({type(e).__name__}: {e})") from None
    return kaggle_folder(path)


def kaggle_folder(path: str) -> str:
    """`path` when it holds the training data (train/ or train.zip), else the one folder
    below it that does; UserError otherwise."""
    if kaggle.locate(path, "train") is not None:
        return path
    below = [fileio.join(path, name) for name in sorted(fileio.listdir(path))
             if fileio.isdir(fileio.join(path, name))]
    found = [folder for folder in below if kaggle.locate(folder, "train") is not None]
    if len(found) == 1:
        return found[0]
    raise UserError(f"{path}: holds neither train.zip nor train/ (the Kaggle download)")


def drive_folder(path: str) -> str:
    """A Kaggle download on a mounted Google Drive; UserError when Drive is not mounted, or
    the folder or its train.zip is missing."""
    if path.startswith(DRIVE_ROOT) and not os.path.isdir(os.path.join(DRIVE_ROOT, "MyDrive")):
        raise UserError(f"{path}: Google Drive is not mounted at {DRIVE_ROOT}; run "
                        f"`from google.colab import drive; drive.mount('{DRIVE_ROOT}')` first")
    if not fileio.isdir(path):
        raise UserError(f"{path}: folder not found; put train.zip and test.zip from the "
                        f"competition's data page ({RULES_URL.removesuffix('/rules')}/data) "
                        "there")
    return kaggle_folder(path)


def has_kaggle_token() -> bool:
    try:
        from kagglehub import config
    except ImportError:
        return False
    return config.get_kaggle_credentials() is not None


def choose(source: str, drive_path: str, synthetic_out: str, **synthetic_sizes: int) -> str:
    """The Kaggle folder for `source`: "kaggle", "drive", "synthetic", or "auto" (the Drive
    folder if it exists, else the competition if a Kaggle token is set up, else synthetic
    data). Says which it took and why. `synthetic_sizes` go to `synthetic.generate`."""
    if source not in ("auto", "kaggle", "drive", "synthetic"):
        raise UserError(f"data source {source!r}: choose auto, kaggle, drive or synthetic")
    if source == "auto":
        if drive_path and os.path.isdir(drive_path):
            source = "drive"
        elif has_kaggle_token():
            source = "kaggle"
        else:
            print(f"no folder at {drive_path!r} and no Kaggle API token: synthetic data "
                  f"({TOKEN_HELP})")
            source = "synthetic"
    if source == "drive":
        return drive_folder(drive_path)
    if source == "kaggle":
        return competition_download()
    if not fileio.isfile(fileio.join(synthetic_out, kaggle.TRAIN_MASKS_CSV)):
        print(synthetic.generate(synthetic_out, **synthetic_sizes))
    return synthetic_out
