"""Several processes for real: `nerve-jax train|evaluate|predict` launched as 2 processes x 2
forced CPU devices (jax.distributed, a local coordinator, gloo collectives) against 1 process x
8 devices (the test process itself) at the same global batch; checkpoints restored across
topologies; a killed process; bad launch flags.

Tolerances: the two runs differ only in the order of floating-point reductions (gloo's
all-reduce between processes against XLA's within one), about 1e-7 relative per step. The runs
use SGD, whose update is linear in the gradient, so that difference stays at that level; Adam
divides by the root of tiny second moments and would turn it into lr-sized steps in a few
parameters. A wrong batch, slice or collective moves parameters by far more than 1e-5.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, TEST_CONFIG

pytestmark = pytest.mark.slow

LAUNCH_TIMEOUT = 300  # s for one command, all its processes together.
TRAIN = ["--config.optimizer=sgd", "--config.learning_rate=0.1",
         "--config.num_train_steps=6", "--config.eval_every_steps=3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = REPO
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _start(args: list[str], processes: int, devices: int, extra: list[str] = ()) -> list:
    command = [sys.executable, "-m", "nerve_jax.cli", *args]
    if processes == 1:
        launches = [command]
    else:
        port = _free_port()
        launches = [[*command, "--coordinator", f"localhost:{port}", "--num-processes",
                     str(processes), "--process-id", str(i), *extra] for i in range(processes)]
    return [subprocess.Popen(c, env=_env(devices), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for c in launches]


def _finish(procs: list, timeout: float = LAUNCH_TIMEOUT) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append((p.returncode, out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def _run(args, processes, devices, extra=()) -> list[tuple[int, str]]:
    results = _finish(_start(args, processes, devices, extra))
    for i, (code, out) in enumerate(results):
        assert code == 0, f"process {i} of {processes} exited {code}:\n{out[-3000:]}"
    return results


@pytest.fixture(scope="module")
def runs(tiny_kaggle_dir, tmp_path_factory):
    """One training run on 2 processes x 2 devices and one on this process's 8 devices, same
    data and config."""
    root = tmp_path_factory.mktemp("multiprocess")
    data = [f"--config.kaggle_dir={tiny_kaggle_dir}", f"--config.tfds_data_dir={root / 'tfds'}"]
    workdirs = {"2x2": str(root / "two_processes"), "1x8": str(root / "one_process")}
    train = ["train", "--config", TEST_CONFIG, *data, *TRAIN]
    outputs = {"2x2": _run([*train, "--workdir", workdirs["2x2"]], 2, 2)}
    _in_this_process([*train, "--workdir", workdirs["1x8"]])
    return {"workdirs": workdirs, "outputs": outputs, "root": root}


def _in_this_process(args: list[str]) -> None:
    """A command on 1 process x the 8 devices of the test process (tests/conftest.py)."""
    import jax

    from nerve_jax import cli

    assert jax.device_count() == 8
    assert cli.main(args) == 0


def _latest_state(workdir: str):
    import jax

    from nerve_jax import checkpoint, config_util, parallel, step

    config = config_util.load(workdir)
    abstract = step.abstract_train_state(config, parallel.make_mesh())
    mngr = checkpoint.manager(workdir, read_only=True)
    latest = mngr.latest_step()
    return latest, jax.device_get(checkpoint.restore(mngr, latest, abstract))


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_two_processes_train_as_one(runs):
    import jax

    two, one = runs["workdirs"]["2x2"], runs["workdirs"]["1x8"]
    (step_two, state_two), (step_one, state_one) = _latest_state(two), _latest_state(one)
    assert step_two == step_one == 6
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), state_one.params,
                         _initial_params(one))
    assert max(jax.tree.leaves(moved)) > 1e-3  # It trained: the comparison below means something.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 (state_two.params, state_two.batch_stats),
                 (state_one.params, state_one.batch_stats))
    metrics_two, metrics_one = _metrics(two), _metrics(one)
    assert [m["step"] for m in metrics_two] == [m["step"] for m in metrics_one]
    for a, b in zip(metrics_two, metrics_one, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    # One set of checkpoints, the same steps, one metrics log: process 0 writes what is shared.
    assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == sorted(
        os.listdir(os.path.join(one, "checkpoints")))
    # Process 0 built the TFDS dataset; process 1 waited for it and printed nothing of its own.
    (_, out_zero), (_, out_one) = runs["outputs"]["2x2"]
    assert "building TFDS" in out_zero and "building TFDS" not in out_one
    assert "best checkpoint: step" in out_zero and "best checkpoint" not in out_one


def _initial_params(workdir: str):
    import jax

    from nerve_jax import config_util, step

    config = config_util.load(workdir)
    return jax.device_get(step.create_train_state(config, jax.random.key(config.seed)).params)


def _evaluate(workdir: str, processes: int, devices: int, capsys) -> dict:
    if os.path.exists(os.path.join(workdir, "eval.json")):
        os.remove(os.path.join(workdir, "eval.json"))
    if processes == 1:
        _in_this_process(["evaluate", "--workdir", workdir])
        assert "Kaggle Dice" in capsys.readouterr().out
    else:
        outputs = _run(["evaluate", "--workdir", workdir], processes, devices)
        assert "Kaggle Dice" in outputs[0][1]
        assert all("Kaggle Dice" not in out for _, out in outputs[1:])
    with open(os.path.join(workdir, "eval.json")) as f:
        result = json.load(f)
    with np.load(os.path.join(workdir, "heldout_predictions.npz")) as f:
        order = np.argsort(f["names"])  # Each process predicts its share of the frames.
        result["names"], result["logits"] = f["names"][order], f["logits"][order]
    return result


@pytest.mark.parametrize("written_by", ["2x2", "1x8"])
def test_checkpoints_restore_on_other_topologies(runs, written_by, capsys):
    """Written by 2 processes x 2 devices and evaluated on 1 x 8, and the other way round:
    the same Kaggle Dice and held-out logits as an evaluation on the writer's topology."""
    workdir = runs["workdirs"][written_by]
    topologies = [(1, 8), (2, 2)]
    results = [_evaluate(workdir, p, d, capsys) for p, d in topologies]
    for result in results[1:]:
        assert result["step"] == results[0]["step"]
        assert result["val_dice"] == pytest.approx(results[0]["val_dice"], abs=1e-6)
        assert result["val_empty_dice"] == results[0]["val_empty_dice"]
        np.testing.assert_array_equal(result["names"], results[0]["names"])
        # float16 in the file: its resolution near the logits' magnitude (< 4).
        np.testing.assert_allclose(result["logits"].astype(np.float32),
                                   results[0]["logits"].astype(np.float32), atol=4e-3)


def test_predict_and_tune_on_two_processes(runs, tmp_path):
    workdir = runs["workdirs"]["2x2"]
    tuned = _run(["tune", "--workdir", workdir, "--quiet", "--workers", "1"], 2, 2)
    assert "searched" in tuned[0][1]
    assert "process 1: tune runs on process 0 only" in tuned[1][1]
    csv_two, csv_one = str(tmp_path / "two.csv"), str(tmp_path / "one.csv")
    outputs = _run(["predict", "--workdir", workdir, "--out", csv_two], 2, 2)
    assert f"{csv_two}: valid" in outputs[0][1] and "valid" not in outputs[1][1]
    _in_this_process(["predict", "--workdir", workdir, "--out", csv_one])
    with open(csv_two) as a, open(csv_one) as b:
        assert a.read() == b.read()


def test_a_killed_process_stops_the_other(runs, tiny_kaggle_dir, tmp_path):
    """kill -9 of process 1 mid-training: process 0 exits non-zero within the heartbeat
    timeout, saying which task stopped, instead of hanging in a collective."""
    args = ["train", "--config", TEST_CONFIG, "--workdir", str(tmp_path / "work"),
            f"--config.kaggle_dir={tiny_kaggle_dir}",
            f"--config.tfds_data_dir={runs['root'] / 'tfds'}",
            "--config.num_train_steps=100000", "--config.eval_every_steps=100000"]
    procs = _start(args, 2, 2, extra=["--heartbeat-timeout", "5"])
    try:
        _wait_for_training(tmp_path / "work", procs)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        out, _ = procs[0].communicate(timeout=60)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode != 0
    assert waited < 30
    # Ours when a collective notices first; JAX's when its heartbeats do.
    assert ("error: lost contact with another process" in out
            or "stopped sending heartbeats" in out), out[-2000:]


def test_sigterm_to_one_process_stops_all_at_the_same_step(runs, tiny_kaggle_dir, tmp_path):
    """SIGTERM to process 1 alone: the processes agree on it at the next log step (no host
    collective at the steps between), save that step together and exit 0."""
    workdir = tmp_path / "work"
    args = ["train", "--config", TEST_CONFIG, "--workdir", str(workdir),
            f"--config.kaggle_dir={tiny_kaggle_dir}",
            f"--config.tfds_data_dir={runs['root'] / 'tfds'}", "--config.log_every_steps=10",
            "--config.num_train_steps=100000", "--config.eval_every_steps=100000"]
    procs = _start(args, 2, 2)
    try:
        _wait_for_training(workdir, procs)
        procs[1].send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "a stop request: saved step" in outputs[0] and "SIGTERM: saved step" in outputs[1]
    saved = {int(out.split("saved step ")[1].split(";")[0]) for out in outputs}
    assert len(saved) == 1 and saved.pop() % 10 == 0
    from nerve_jax import checkpoint

    latest = checkpoint.manager(str(workdir), read_only=True).latest_step()
    assert latest % 10 == 0 and f"saved step {latest};" in outputs[0]


def _wait_for_training(workdir, procs, timeout: float = 240) -> None:
    """Until process 0 has logged a training step (config.log_every_steps=1)."""
    deadline = time.monotonic() + timeout
    metrics = workdir / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().strip()):
        assert all(p.poll() is None for p in procs), "a process ended before training"
        assert time.monotonic() < deadline, "no training step logged"
        time.sleep(0.5)


def _bad_launch(args: list[str], tmp_path, devices: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "nerve_jax.cli", "train", "--config", TEST_CONFIG,
               "--workdir", str(tmp_path / "work"), *args]
    return subprocess.run(command, env=_env(devices), cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("flags,message", [
    (["--num-processes", "2", "--process-id", "0"],
     "--num-processes, --process-id given without --coordinator"),
    (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id=2: must be in 0..1 for --num-processes=2"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
     "expected HOST:PORT"),
    (["--distributed", "--process-id", "0"], "--distributed detects the cluster itself"),
])
def test_bad_launch_flags_are_refused_before_any_work(flags, message, tmp_path, capsys):
    from nerve_jax import cli

    code = cli.main(["train", "--config", TEST_CONFIG, "--workdir", str(tmp_path / "work"),
                     *flags])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "work").exists()


def test_an_unreachable_coordinator_is_named_after_a_bounded_wait(tmp_path):
    port = _free_port()  # Nothing listens there.
    started = time.monotonic()
    result = _bad_launch(["--coordinator", f"localhost:{port}", "--num-processes", "2",
                          "--process-id", "1", "--coordinator-timeout", "3"], tmp_path)
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"--coordinator=localhost:{port}: unreachable after 3 s" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()


def test_a_batch_that_does_not_split_over_the_global_devices(tiny_kaggle_dir, tmp_path):
    """6 frames over 2 processes x 2 devices: both processes say so and exit 2."""
    args = ["train", "--config", TEST_CONFIG, "--workdir", str(tmp_path / "work"),
            f"--config.kaggle_dir={tiny_kaggle_dir}", "--config.batch_size=6"]
    results = _finish(_start(args, 2, 2))
    for code, out in results:
        assert code == 2, out[-2000:]
        assert "config.batch_size=6: must be divisible by the number of devices (4, over 2 " \
               "processes)" in out
        assert "Traceback" not in out
    assert not (tmp_path / "work").exists()
