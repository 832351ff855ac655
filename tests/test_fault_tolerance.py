"""Training that survives: SIGTERM saves and exits 0, kill -9 resumes to the same parameters, a
NaN stops cleanly, a damaged checkpoint is skipped, early stopping is remembered, and an
unwritable workdir or a failing save is a clear error."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from nerve_jax import checkpoint, cli, step, train
from nerve_jax.data import pipeline
from nerve_jax.errors import TrainingDiverged, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir, kaggle_dir, tfds_dir, steps, *extra):
    return [sys.executable, "-m", "nerve_jax.cli", "train", "--config", "configs/test.py",
            "--workdir", str(workdir), f"--config.kaggle_dir={kaggle_dir}",
            f"--config.tfds_data_dir={tfds_dir}", f"--config.num_train_steps={steps}",
            "--config.eval_every_steps=1000", *extra]


def _env():
    return {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}


def _steps_logged(workdir) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        steps = [json.loads(line)["step"] for line in f if line.strip().endswith("}")]
    return max(steps, default=0)


def _final_params(workdir):
    mngr = checkpoint.manager(str(workdir), read_only=True)
    step = mngr.latest_step()
    restored = mngr.restore(step)
    return step, restored["params"]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, tiny_kaggle_dir):
    path = str(tmp_path_factory.mktemp("tfds"))
    from nerve_jax.data import tfds_builder

    tfds_builder.prepare(tiny_kaggle_dir, path)
    return path


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_kaggle_dir, tfds_dir):
    """60 steps without interruption, as a subprocess like the interrupted runs."""
    workdir = tmp_path_factory.mktemp("straight") / "work"
    subprocess.run(_command(workdir, tiny_kaggle_dir, tfds_dir, 60), env=_env(), cwd=REPO,
                   check=True, capture_output=True, timeout=600)
    return _final_params(workdir)


@pytest.mark.slow
def test_sigterm_saves_the_step_reached_exits_0_and_resumes_to_the_same_parameters(
        tmp_path, tiny_kaggle_dir, tfds_dir, straight_run):
    workdir = tmp_path / "work"
    command = _command(workdir, tiny_kaggle_dir, tfds_dir, 60)
    process = subprocess.Popen(command, env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _steps_logged(workdir) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    saved = int(out.split("saved step ")[1].split(";")[0])
    assert "SIGTERM: saved step" in out and "run the same command to resume" in out
    assert 5 <= saved < 60
    assert checkpoint.manager(str(workdir), read_only=True).latest_step() == saved
    subprocess.run(command, env=_env(), cwd=REPO, check=True, capture_output=True, timeout=600)
    step, params = _final_params(workdir)
    want_step, want = straight_run
    assert step == want_step == 60
    chex.assert_trees_all_close(params, want, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_random_kills_even_inside_saves_resume_to_the_same_parameters(
        tmp_path, tiny_kaggle_dir, tfds_dir, straight_run):
    workdir = tmp_path / "work"
    # A checkpoint every 2 steps: most moments of a run are inside or near a save.
    command = _command(workdir, tiny_kaggle_dir, tfds_dir, 60, "--config.checkpoint_every_steps=2")
    rng = random.Random(0)
    kills, failed = 0, []
    for _ in range(4):  # benchmarks/kill_soak.py kills many more times.
        process = subprocess.Popen(command, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        start = _steps_logged(workdir)
        target = start + rng.randint(1, 15)
        deadline = time.monotonic() + 300
        while (process.poll() is None and _steps_logged(workdir) < target
               and time.monotonic() < deadline):
            time.sleep(0.005)
        time.sleep(rng.random() * 0.05)
        if process.poll() is None:
            process.kill()
            kills += 1
        _, err = process.communicate(timeout=300)
        if process.returncode not in (0, -signal.SIGKILL):
            failed.append(err[-2000:])
        if process.returncode == 0:
            break
    else:
        subprocess.run(command, env=_env(), cwd=REPO, check=True, capture_output=True,
                       timeout=600)
    assert failed == [] and kills >= 3
    step, params = _final_params(workdir)
    want_step, want = straight_run
    assert step == want_step == 60
    chex.assert_trees_all_close(params, want, rtol=1e-5, atol=1e-7)


def _config(test_config, kaggle_dir, tfds_dir, steps, **fields):
    config = test_config()
    config.kaggle_dir, config.tfds_data_dir = kaggle_dir, tfds_dir
    config.num_train_steps = steps
    for name, value in fields.items():
        config[name] = value
    return config


@pytest.mark.slow
def test_a_nan_stops_training_with_the_step_and_saves_nothing(
        test_config, tiny_kaggle_dir, tfds_dir, tmp_path, monkeypatch, capfd):
    real = pipeline.train_batches

    def poisoned(*args, **kwargs):
        for at, batch in enumerate(real(*args, **kwargs), start=args[5] + 1):
            if at == 4:
                batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
            yield batch

    monkeypatch.setattr(pipeline, "train_batches", poisoned)
    workdir = tmp_path / "work"
    config = _config(test_config, tiny_kaggle_dir, tfds_dir, 8, checkpoint_every_steps=0)
    # A checkpoint due at the poisoned step 4 too: nothing of it may be saved.
    code = cli.main(["train", "--config", "configs/test.py", "--workdir", str(workdir),
                     f"--config.kaggle_dir={tiny_kaggle_dir}",
                     f"--config.tfds_data_dir={tfds_dir}", "--config.num_train_steps=8",
                     "--config.checkpoint_every_steps=2"])
    err = capfd.readouterr().err
    assert code == 3
    assert "non-finite loss or gradient at step 4: training stopped" in err
    mngr = checkpoint.manager(str(workdir), read_only=True)
    assert mngr.latest_step() == 2
    _, params = _final_params(workdir)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
    # Skipping instead: the poisoned step's update is dropped and training goes on.
    config.skip_nonfinite_steps = 1
    result = train.train_and_evaluate(config, str(tmp_path / "skipping"))
    assert result.status == "finished" and result.step == 8
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(result.state.params))
    assert "step 4: non-finite loss or gradient, update skipped" in capfd.readouterr().err


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_latest_checkpoint_is_skipped_with_a_warning(
        test_config, tiny_kaggle_dir, tfds_dir, tmp_path, capfd):
    workdir = str(tmp_path / "work")
    config = _config(test_config, tiny_kaggle_dir, tfds_dir, 4, checkpoint_every_steps=1)
    train.train_and_evaluate(config, workdir)
    files = [f for f in glob.glob(os.path.join(workdir, "checkpoints", "4", "**", "*"),
                                  recursive=True)
             if os.path.isfile(f) and "ocdbt.process_0" in f and os.sep + "d" + os.sep in f]
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(7)
    config.num_train_steps = 6
    result = train.train_and_evaluate(config, workdir)
    err = capfd.readouterr().err
    assert "checkpoint step 4 in" in err and "cannot be restored" in err
    assert "trying an older one" in err
    assert result.status == "finished" and result.step == 6
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records if "train_loss" in r][-3:] == [4, 5, 6]  # From step 3.


@pytest.mark.slow
def test_early_stopping_is_remembered_until_the_patience_or_budget_is_raised(
        test_config, tiny_kaggle_dir, tfds_dir, tmp_path):
    workdir = str(tmp_path / "work")
    config = _config(test_config, tiny_kaggle_dir, tfds_dir, 12, learning_rate=0.0, threshold=1.0,
                     eval_every_steps=2, early_stopping_patience=2)
    first = train.train_and_evaluate(config, workdir)
    assert first.status == "early_stopped" and first.step == 6
    again = train.train_and_evaluate(config, workdir)
    assert again.status == "already_early_stopped" and again.step == 6
    config.early_stopping_patience = 3
    raised = train.train_and_evaluate(config, workdir)
    assert raised.step > 6  # Trains on; where it stops again depends on ties among equal Dice.


def test_an_unwritable_workdir_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"a_file/work: the workdir cannot be written"):
        train.check_workdir(str(blocker / "work"))


def test_a_failing_save_is_named_and_spares_the_earlier_checkpoints(tmp_path, monkeypatch):
    mngr = checkpoint.manager(str(tmp_path))
    state = {"w": np.ones(3, np.float32)}
    checkpoint.save(mngr, 1, state, 0.5)
    checkpoint.wait(mngr)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mngr, "save", full_disk)
    with pytest.raises(UserError, match=r"saving checkpoint step 2 in .* failed \(\[Errno 28\] "
                                        r"No space left on device\); the checkpoints before it"):
        checkpoint.save(mngr, 2, state, 0.6)
    assert checkpoint.restore_latest(checkpoint.manager(str(tmp_path), read_only=True),
                                     state)[0] == 1


@pytest.mark.slow
def test_the_train_step_never_applies_a_non_finite_update(test_config):
    config = test_config()
    state = step.create_train_state(config, jax.random.key(0), axis_name=None)
    h, w = config.image_size
    batch = {"image": np.full((2, h, w, 1), np.nan, np.float32),
             "mask": np.zeros((2, h, w, 1), np.float32)}
    from nerve_jax import losses

    new, metrics = jax.jit(lambda s, b: step.train_step(
        s, b, jax.random.key(0), loss_fn=losses.from_config(config)))(state, batch)
    assert float(metrics["finite"]) == 0.0
    chex.assert_trees_all_equal(new.params, state.params)
    with pytest.raises(TrainingDiverged, match="at step 7"):
        train.FiniteGuard(0).check(7, metrics["finite"])


def test_the_first_signal_asks_to_stop_and_the_second_aborts():
    from nerve_jax.runtime import interrupts

    before = signal.getsignal(signal.SIGINT)
    with interrupts.StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
