"""gs:// paths end to end against a fake GCS on localhost (tests/fake_gcs.py: gcp-storage-emulator
behind a TLS proxy, since TensorFlow's GCS file system has Google's addresses built in): the
Kaggle zips, the TFDS data, the workdir (orbax checkpoints, TensorBoard, JSON, npz) and the
submission all in a bucket; and the clear errors for a missing bucket and a refused caller."""

import csv
import io
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO, TEST_CONFIG

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the fake GCS makes its TLS certificates with openssl")
BUCKET = "test-bucket"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    from tests import fake_gcs

    with fake_gcs.fake_gcs(str(tmp_path_factory.mktemp("certs")), buckets=(BUCKET,)) as env:
        yield env


def _client(gcs):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": gcs["STORAGE_EMULATOR_HOST"]})


def _zip(folder: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name in sorted(os.listdir(folder)):
            z.write(os.path.join(folder, name), f"{os.path.basename(folder)}/{name}")
    return buffer.getvalue()


def _cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "nerve_jax.cli", *args], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_train_resume_tune_predict_in_a_bucket(gcs, tiny_kaggle_dir, capsys):
    from nerve_jax import cli

    bucket = _client(gcs).bucket(BUCKET)
    for part in ("train", "test"):
        bucket.blob(f"data/{part}.zip").upload_from_string(
            _zip(os.path.join(tiny_kaggle_dir, part)))
    data, run, tfds = (f"gs://{BUCKET}/{name}" for name in ("data", "run", "tfds"))
    submission = f"gs://{BUCKET}/out/submission.csv"
    train = ["train", "--config", TEST_CONFIG, "--workdir", run,
             f"--config.kaggle_dir={data}", f"--config.tfds_data_dir={tfds}"]
    result = _cli(*train, "--config.num_train_steps=2")  # The command as a user starts it.
    assert result.returncode == 0, result.stderr[-3000:]
    # The rest in this process (its 8 devices), each child costing ~20 s against the fake: the
    # resume from the first run's checkpoint in the bucket, then tune on the held-out
    # predictions train wrote there (`evaluate` writes through the same fileio calls as train
    # and tune do), then predict.
    for command in ([*train, "--config.num_train_steps=4"], ["tune", "--workdir", run, "--quiet"],
                    ["predict", "--workdir", run, "--out", submission]):
        assert cli.main(command) == 0, command
    assert f"{submission}: valid" in capsys.readouterr().out  # predict checks what it wrote

    names = {blob.name for blob in bucket.list_blobs()}
    assert {f"run/{name}" for name in ("config.json", "heldout_predictions.npz",
                                       "postprocess.json", "metrics.jsonl")} <= names
    assert any(n.startswith("run/checkpoints/4/") for n in names)
    assert any(n.startswith("run/tensorboard/") for n in names)
    assert any(n.startswith("tfds/ultrasound_nerve/") for n in names)
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in
             bucket.blob("run/metrics.jsonl").download_as_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 4 and 3 in steps  # one log, resumed at 3
    rows = list(csv.DictReader(io.StringIO(bucket.blob("out/submission.csv").download_as_text())))
    assert len(rows) == 4


@pytest.mark.slow  # Command-line runs against the fake: ~20 s each.
def test_a_missing_bucket_is_named(gcs, tmp_path):
    result = _cli("train", "--config", TEST_CONFIG, "--workdir", "gs://no-such-bucket/run",
                  f"--config.kaggle_dir={tmp_path}", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no bucket gs://no-such-bucket" in result.stderr
    assert "credentials" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_caller_without_credentials_is_told_what_to_do(tmp_path):
    from tests import fake_gcs

    os.environ["FAKEGCS_DENY"] = "401"  # The fake answers like GCS to an anonymous caller.
    try:
        with fake_gcs.fake_gcs(str(tmp_path / "certs"), buckets=(BUCKET,)) as env:
            result = _cli("predict", "--workdir", str(tmp_path / "run"), "--out",
                          f"gs://{BUCKET}/out/submission.csv", env=env, timeout=120)
    finally:
        del os.environ["FAKEGCS_DENY"]
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"gs://{BUCKET}/out: the folder of --out cannot be reached" in result.stderr
    assert "401" in result.stderr and "gcloud auth application-default login" in result.stderr
    assert "Traceback" not in result.stderr
