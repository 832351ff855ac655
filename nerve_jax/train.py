"""The training loop: `train_and_evaluate(config, workdir)`, with its guards (non-finite steps),
early stopping, checkpoints, stop requests and logs. The steps it runs come from step.py, its
evaluations from evaluation.py.
"""

import json
import time
from typing import NamedTuple

import jax
import ml_collections
import tensorflow as tf
from tqdm import tqdm

from nerve_jax import checkpoint, config_util, evaluation, fileio, parallel, runtime
from nerve_jax.atomic import atomic_open
from nerve_jax.data import pipeline, tfds_builder
from nerve_jax.errors import TrainingDiverged, UserError
from nerve_jax.runtime import distributed, interrupts
from nerve_jax.step import TrainState, create_train_state, parallel_train_step


class MetricLog:
    """Writes scalars to TensorBoard (workdir/tensorboard) and to workdir/metrics.jsonl."""

    def __init__(self, workdir: str, enabled: bool):
        self.enabled = enabled
        if enabled:
            self.writer = tf.summary.create_file_writer(fileio.join(workdir, "tensorboard"))
            self.path = fileio.join(workdir, "metrics.jsonl")

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        with self.writer.as_default():
            for name, value in scalars.items():
                tf.summary.scalar(name, value, step=step)
        self.writer.flush()
        fileio.append_text(self.path, json.dumps({"step": step, **scalars}) + "\n")


def num_train_steps(config: ml_collections.ConfigDict, num_train_frames: int) -> int:
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    steps_per_epoch = num_train_frames // config.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"config.batch_size={config.batch_size} is larger than the "
                        f"{num_train_frames} training frames")
    return int(config.num_epochs * steps_per_epoch)


class BestSoFar(NamedTuple):
    """The best validation Dice seen and the step that first reached it (-1: none yet)."""

    dice: float
    step: int

    def update(self, step: int, dice: float) -> "BestSoFar":
        return BestSoFar(dice, step) if dice > self.dice else self


def best_so_far(mngr) -> BestSoFar:
    """From the checkpoints on a restart: the manager always keeps the best one. (Among equal
    scores it reports the latest step, so an exact tie may restart the patience count.)"""
    step = mngr.best_step()
    metrics = mngr.metrics(step) if step is not None else None
    if not metrics:
        return BestSoFar(float("-inf"), -1)
    return BestSoFar(float(metrics[checkpoint.BEST_METRIC]), step)


def patience_exhausted(step: int, best: BestSoFar, patience: int, eval_every_steps: int) -> bool:
    """Early stopping: True once `patience` (> 0) evaluations passed without a Dice above the
    best. Every host evaluates the same psum-ed Dice, so all of them stop at the same step."""
    return patience > 0 and best.step >= 0 and step - best.step >= patience * eval_every_steps


class TrainResult(NamedTuple):
    state: TrainState
    val_metrics: dict  # The last evaluation: val_dice, val_empty_dice, val_frames ({}: none).
    eval_step: int  # The step of that evaluation (-1: none in this run).
    best: BestSoFar  # The best checkpoint: the one evaluate, tune and predict use.
    # "finished", "early_stopped", "already_early_stopped" (an earlier run stopped early and
    # neither the patience nor the step budget was raised) or "interrupted" (SIGTERM/SIGINT:
    # saved at `step`).
    status: str = "finished"
    step: int = 0  # The step the state is at.


EARLY_STOP_FILE = "early_stopped.json"


def check_workdir(workdir: str) -> None:
    """UserError before any work unless `workdir` can be created and written."""
    fileio.check_writable(workdir, "the workdir")


def _read_early_stop(workdir: str) -> dict | None:
    path = fileio.join(workdir, EARLY_STOP_FILE)
    if not fileio.isfile(path):
        return None
    return json.loads(fileio.read_text(path))


def already_early_stopped(workdir: str, config, total_steps: int) -> dict | None:
    """The record of an earlier early stop that still holds: neither config's patience (0 =
    never stop) nor its step budget is above that run's."""
    record = _read_early_stop(workdir)
    if record is None:
        return None
    patience = config.early_stopping_patience
    raised = patience == 0 or patience > record["patience"] or total_steps > record["total_steps"]
    if raised:
        if jax.process_index() == 0:  # Its writer; the other processes may share the folder.
            fileio.remove(fileio.join(workdir, EARLY_STOP_FILE))
        return None
    return record


class FiniteGuard:
    """Stops training at a non-finite loss or gradient (train_step never applies such an
    update), or skips up to `max_skips` of them in a row. The steps' flags stay on the device
    until the host needs them (`flush`, before a log line, an evaluation or a save), so the
    loop does not wait for every step."""

    def __init__(self, max_skips: int):
        self.max_skips, self.in_a_row, self.pending = max_skips, 0, []

    def add(self, step: int, finite: jax.Array) -> None:
        self.pending.append((step, finite))

    def check(self, step: int, finite: jax.Array) -> None:
        self.add(step, finite)
        self.flush()

    def flush(self) -> None:
        steps = [step for step, _ in self.pending]
        flags = jax.device_get([finite for _, finite in self.pending])
        self.pending = []
        for step, finite in zip(steps, flags, strict=True):
            self._judge(step, float(finite) == 1.0)

    def _judge(self, step: int, finite: bool) -> None:
        if finite:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.in_a_row > self.max_skips:
            raise TrainingDiverged(
                f"non-finite loss or gradient at step {step}: training stopped, and the latest "
                "checkpoint is the last one saved before it. Lower the learning rate, check the "
                "data, or let config.skip_nonfinite_steps skip such steps")
        runtime.logger().warning("step %d: non-finite loss or gradient, update skipped (%d in a "
                                 "row, config.skip_nonfinite_steps=%d)", step, self.in_a_row,
                                 self.max_skips)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    """Trains on the training subjects, evaluating and checkpointing on the validation subjects.

    Resumes from the newest readable checkpoint in `workdir`. Checkpoints come at evaluations
    (with their validation Dice; the best is kept apart) and every config.checkpoint_every_steps
    or config.checkpoint_every_minutes. SIGTERM or SIGINT saves the step reached and returns
    status "interrupted"; a non-finite loss raises TrainingDiverged.
    """
    config = config_util.checked(config, needs_data=True)  # Before any work.
    check_workdir(workdir)
    runtime.start_tensorflow()
    builder = tfds_builder.prepare_for(config, workdir)
    frames = pipeline.frames_per_subject(builder)
    train_subjects, val_subjects = pipeline.split_subjects(
        list(frames), config.num_folds, config.fold, config.split_seed)
    total_steps = num_train_steps(config, sum(frames[s] for s in train_subjects))
    is_main = jax.process_index() == 0
    if is_main:
        config_util.save(config, workdir)

    mesh = parallel.make_mesh()
    state = create_train_state(config, jax.random.key(config.seed), total_steps)
    state = parallel.replicate(state, mesh)
    mngr = checkpoint.manager(workdir, config.checkpoints_to_keep)
    start_step, restored = checkpoint.restore_latest(mngr, state)
    state = restored if start_step else state
    best = best_so_far(mngr)
    if (record := already_early_stopped(workdir, config, total_steps)) is not None:
        runtime.logger().info(
            "%s stopped early at step %d (best step %d, validation Dice %.4f, patience %d); "
            "raise --config.early_stopping_patience or the step budget to train on",
            workdir, record["step"], best.step, best.dice, record["patience"])
        return TrainResult(state, {}, -1, best, "already_early_stopped", start_step)
    try:
        return _train_loop(config, workdir, builder, train_subjects, val_subjects, total_steps,
                           state, start_step, best, mesh, mngr)
    finally:
        checkpoint.wait(mngr)


def _train_loop(config, workdir, builder, train_subjects, val_subjects, total_steps, state,
                start_step, best, mesh, mngr) -> TrainResult:
    is_main = jax.process_index() == 0
    train = parallel_train_step(config, mesh)
    evaluator = evaluation.with_config_settings(config, mesh)
    log = MetricLog(workdir, enabled=is_main)
    batches = pipeline.train_batches(builder, train_subjects, config.image_size,
                                     config.batch_size, config.seed, start_step,
                                     config.clean, config.duplicate_threshold,
                                     config.augment)
    batches = parallel.prefetch_to_device(batches, config.parallel, mesh)
    val_metrics, eval_step, status = {}, -1, "finished"
    guard, patience = FiniteGuard(config.skip_nonfinite_steps), config.early_stopping_patience
    last_save, step = time.monotonic(), start_step
    progress = _progress(start_step, total_steps, is_main)
    with interrupts.StopRequests() as stop:
        for step in range(start_step + 1, total_steps + 1):
            state, step_metrics = train(state, next(batches))
            progress.update(1)
            guard.add(step, step_metrics["finite"])
            logging_step = step % config.log_every_steps == 0 or step == total_steps
            eval_step_now = step % config.eval_every_steps == 0 or step == total_steps
            stop_now, save_due = _stop_or_save(config, step, last_save, stop,
                                               at_sync_point=logging_step or eval_step_now)
            if logging_step or eval_step_now or stop_now or save_due:
                guard.flush()  # Nothing is logged or saved after a non-finite step.
            if logging_step:
                scalars = {f"train_{k}": float(v) for k, v in
                           jax.device_get(step_metrics).items() if k != "finite"}
                log.write(step, scalars)
                progress.set_postfix(loss=f"{scalars['train_loss']:.4f}")
            saved = False
            if eval_step_now:
                val_metrics = evaluator.run(
                    state, evaluation.validation_batches(config, builder, val_subjects)).scores
                eval_step = step
                log.write(step, val_metrics)
                checkpoint.save(mngr, step, state, val_metrics["val_dice"])
                saved, last_save = True, time.monotonic()
                best = best.update(step, val_metrics["val_dice"])
                if patience_exhausted(step, best, patience, config.eval_every_steps):
                    _early_stop(workdir, step, best, patience, total_steps, log, progress)
                    status = "early_stopped"
                    break
            if not saved and (save_due or stop_now):
                checkpoint.save(mngr, step, state, None)
                saved, last_save = True, time.monotonic()
            if stop_now:
                checkpoint.wait(mngr)
                progress.close()
                print(f"{stop.requested or 'a stop request'}: saved step {step}; run the same "
                      "command to resume", flush=True)
                return TrainResult(state, val_metrics, eval_step, best, "interrupted", step)
    progress.close()
    return TrainResult(state, val_metrics, eval_step, best, status, step)


def _stop_or_save(config, step: int, last_save: float, stop: interrupts.StopRequests,
                  at_sync_point: bool) -> tuple[bool, bool]:
    """(stop now, save a "latest" checkpoint now), the same on every process. A checkpoint by
    config.checkpoint_every_steps (0: off) is a matter of the step alone. A stop request and
    config.checkpoint_every_minutes (0: off, on this process's clock) are each process's own:
    with several processes they are agreed only where distributed.agreement_due says (one host
    collective there, not at every step); one process decides at every step."""
    by_steps = bool(config.checkpoint_every_steps) and step % config.checkpoint_every_steps == 0
    if not distributed.agreement_due(step, at_sync_point):
        return False, by_steps
    minutes = config.checkpoint_every_minutes
    by_time = bool(minutes) and time.monotonic() - last_save >= 60 * minutes
    stop_now, by_time = distributed.any_process(stop.requested is not None, by_time)
    return stop_now, by_steps or by_time


def _early_stop(workdir, step, best, patience, total_steps, log, progress) -> None:
    message = (f"early stopping at step {step}: no better validation Dice than "
               f"{best.dice:.4f} (step {best.step}) for {patience} evaluations")
    log.write(step, {"early_stopped": 1.0})
    if jax.process_index() == 0:
        progress.write(message)
        with atomic_open(fileio.join(workdir, EARLY_STOP_FILE)) as f:
            json.dump({"step": step, "best_step": best.step, "best_dice": best.dice,
                       "patience": patience, "total_steps": total_steps}, f)


def _progress(start: int, total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, initial=start, desc="train", disable=not enabled, unit="step")
