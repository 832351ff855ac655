"""Training end to end on tiny synthetic data: resume, evaluate, predict, check the submission."""

import json
import os

import chex
import jax
import pytest

from nerve_jax import cli, train


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _config(test_config, kaggle_dir, tfds_dir, steps):
    config = test_config()
    config.kaggle_dir = kaggle_dir
    config.tfds_data_dir = tfds_dir
    config.num_train_steps = steps
    return config


@pytest.mark.slow
def test_resume_gives_the_same_parameters_as_a_straight_run(
    test_config, tiny_kaggle_dir, tfds_dir, tmp_path
):
    straight = train.train_and_evaluate(
        _config(test_config, tiny_kaggle_dir, tfds_dir, 8), str(tmp_path / "straight")
    )
    train.train_and_evaluate(
        _config(test_config, tiny_kaggle_dir, tfds_dir, 4), str(tmp_path / "resumed")
    )
    resumed = train.train_and_evaluate(
        _config(test_config, tiny_kaggle_dir, tfds_dir, 8), str(tmp_path / "resumed")
    )
    assert int(resumed.state.step) == int(straight.state.step) == 8
    chex.assert_trees_all_close(
        jax.device_get(resumed.state.params),
        jax.device_get(straight.state.params),
        rtol=1e-5,
        atol=1e-7,
    )
    chex.assert_trees_all_close(
        jax.device_get(resumed.state.batch_stats),
        jax.device_get(straight.state.batch_stats),
        rtol=1e-5,
        atol=1e-7,
    )
    steps = [json.loads(line)["step"] for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert steps[:4] == [1, 2, 3, 4] and 5 in steps and 8 in steps


@pytest.mark.slow
def test_cli_train_evaluate_predict_check(tiny_kaggle_dir, tfds_dir, tmp_path, capsys):
    workdir = str(tmp_path / "work")
    assert (
        cli.main(
            [
                "train",
                "--config",
                "configs/test.py",
                "--workdir",
                workdir,
                f"--config.kaggle_dir={tiny_kaggle_dir}",
                f"--config.tfds_data_dir={tfds_dir}",
                "--config.num_train_steps=2",
            ]
        )
        == 0
    )
    assert cli.main(["evaluate", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert "all-empty baseline" in out
    result = json.load(open(os.path.join(workdir, "eval.json")))
    assert 0.0 <= result["val_dice"] <= 1.0 and result["val_frames"] > 0
    assert os.path.getsize(os.path.join(workdir, "overlay_val.png")) > 10_000

    submission = str(tmp_path / "submission.csv")
    test_dir = os.path.join(tiny_kaggle_dir, "test")
    assert (
        cli.main(["predict", "--workdir", workdir, "--out", submission, "--test-dir", test_dir])
        == 0
    )
    lines = open(submission).read().splitlines()
    assert lines[0] == "img,pixels"
    assert [int(line.split(",")[0]) for line in lines[1:]] == [1, 2, 3, 4]
    assert cli.main(["check-submission", submission, "--test-dir", test_dir]) == 0
