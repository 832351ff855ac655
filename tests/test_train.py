"""Training end to end on tiny synthetic data: resume, evaluate, predict, check the submission."""

import json
import os

import chex
import jax
import numpy as np
import pytest

from nerve_jax import checkpoint, cli, config_util, step, train
from nerve_jax.data import tfds_builder
from nerve_jax.errors import UserError


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _config(test_config, kaggle_dir, tfds_dir, steps):
    config = test_config()
    config.kaggle_dir = kaggle_dir
    config.tfds_data_dir = tfds_dir
    config.num_train_steps = steps
    return config


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_warms_up_then_follows_the_schedule(test_config, schedule):
    config = test_config()
    config.learning_rate, config.warmup_steps, config.lr_schedule = 0.1, 10, schedule
    lr = step.learning_rate_schedule(config, total_steps=110)
    steps = [0, 5, 10, 60, 110]
    after_warmup = [0.1, 0.1, 0.1] if schedule == "constant" else [
        0.1, 0.05 * (1 + np.cos(np.pi * 50 / 100)), 0.0]  # Cosine from 0.1 to 0 over 100.
    np.testing.assert_allclose([float(lr(s)) for s in steps], [0.0, 0.05, *after_warmup],
                               atol=1e-7)


def test_a_missing_kaggle_dir_is_a_clear_error(test_config, tmp_path):
    config = test_config()
    config.kaggle_dir = ""
    with pytest.raises(UserError, match=r"config.kaggle_dir is not set: pass "
                                        r"--config.kaggle_dir=DIR, a folder in Kaggle layout"):
        train.train_and_evaluate(config, str(tmp_path / "work"))
    assert not os.path.exists(tmp_path / "work")
    config.kaggle_dir = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="config.kaggle_dir folder not found"):
        tfds_builder.prepare_for(config, str(tmp_path))


@pytest.mark.slow
@pytest.mark.mutation
def test_trains_the_configured_steps_from_step_one(test_config, tiny_kaggle_dir, tfds_dir,
                                                   tmp_path):
    config = _config(test_config, tiny_kaggle_dir, tfds_dir, 3)
    config.eval_every_steps = 1
    config.checkpoints_to_keep = 1
    workdir = tmp_path / "work"
    result = train.train_and_evaluate(config, str(workdir))
    assert int(result.state.step) == 3
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3]
    dice = {r["step"]: r["val_dice"] for r in records if "val_dice" in r}
    assert list(dice) == [1, 2, 3] and result.val_metrics["val_dice"] == dice[3]
    mngr = checkpoint.manager(str(workdir), read_only=True)
    best = max(dice, key=lambda step: (dice[step], step))  # Ties: orbax keeps the latest.
    assert mngr.best_step() == best and mngr.latest_step() == 3
    assert result.eval_step == 3 and result.best.dice == dice[best]
    first_best = min(s for s in dice if dice[s] == dice[best])
    assert result.best.step == first_best  # The step that first reached the best Dice.
    assert sorted(mngr.all_steps()) == sorted({best, 3})
    assert json.load(open(workdir / config_util.CONFIG_FILE))["num_train_steps"] == 3


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


NOISE = ("oneDNN custom operations", "absl::InitializeLog", "WARNING:absl", "read only",
         "read_only=True", "Generating", "Shuffling", "Downloading and preparing",
         "tf_record_dataset_op")


@pytest.mark.slow
def test_train_evaluate_predict_check_from_the_command_line(tiny_kaggle_dir, tmp_path, capsys):
    """A fresh `nerve-jax train` process, as a user runs it: no TensorFlow, absl, orbax or
    TFDS lines; ours (the frames `clean` dropped among them) and the progress bars. Then
    evaluate, predict and check-submission on its workdir."""
    import subprocess
    import sys

    workdir = str(tmp_path / "work")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")}
    command = [sys.executable, "-m", "nerve_jax.cli", "train", "--config", "configs/test.py",
               "--workdir", workdir, f"--config.kaggle_dir={tiny_kaggle_dir}",
               f"--config.tfds_data_dir={tmp_path / 'tfds'}", "--config.num_train_steps=2",
               "--config.clean=drop", "--config.duplicate_threshold=1e9",
               "--config.batch_size=4"]  # 7 of the 18 frames are left after the drop.
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert [line for line in output.splitlines() if any(n in line for n in NOISE)] == []
    assert "config.clean='drop': dropped" in result.stderr
    assert "best checkpoint: step 2" in result.stdout

    assert cli.main(["evaluate", "--workdir", workdir]) == 0
    assert "all-empty baseline" in capsys.readouterr().out
    result = json.load(open(os.path.join(workdir, "eval.json")))
    assert 0.0 <= result["val_dice"] <= 1.0 and result["val_frames"] > 0
    assert os.path.getsize(os.path.join(workdir, "overlay_val.png")) > 10_000
    submission = str(tmp_path / "submission.csv")
    test_dir = os.path.join(tiny_kaggle_dir, "test")
    assert cli.main(["predict", "--workdir", workdir, "--out", submission,
                     "--test-dir", test_dir]) == 0
    lines = open(submission).read().splitlines()
    assert lines[0] == "img,pixels"
    assert [int(line.split(",")[0]) for line in lines[1:]] == [1, 2, 3, 4]
    assert cli.main(["check-submission", submission, "--test-dir", test_dir]) == 0
