"""TrainState, train_step, eval_step, predict_step and train_and_evaluate(config, workdir).

The steps are pure functions: `train_step(state, batch, rng, *, loss_fn, axis_name=None)` runs
under plain jax.jit on one device, and under shard_map or pmap (parallel.py) with the mapped
axis named. The model, loss, metrics and batch transform come from the config by name
(registry.py).
"""

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tensorflow as tf
from flax.training import train_state
from jax import lax
from tqdm import tqdm

from nerve_jax import (
    checkpoint,
    config_util,
    fileio,
    losses,
    metrics,
    parallel,
    postprocess,
    registry,
    runtime,
)
from nerve_jax.atomic import atomic_open
from nerve_jax.data import pipeline, tfds_builder
from nerve_jax.errors import TrainingDiverged, UserError
from nerve_jax.runtime import distributed, interrupts

CONFIG_FILE = "config.json"


class TrainState(train_state.TrainState):
    batch_stats: Any  # {} for a model without BatchNorm.


MODELS = {"unet": "nerve_jax.models.unet:UNet"}
# Keys of a batch_transform's output that the train step uses.
BATCH_KEYS = ("image", "mask")


def create_model(config: ml_collections.ConfigDict, axis_name: str | None = parallel.AXIS):
    """The Flax module of config.model.name (MODELS, or "package.module:Class"), built with the
    other config.model fields as keyword arguments ("dtype" as a dtype) and, when it has such a
    field, `axis_name` for synchronised BatchNorm (None under plain jax.jit on one device).

    Contract: `__call__(images [B, H, W, 1] float32, train: bool)` returns {"logits": [B, H, W, 1]
    float32} plus "presence": [B] float32 logits when it has a presence head.
    """
    cls = registry.resolve(config.model.name, MODELS, "config.model.name")
    kwargs = {k: v for k, v in config.model.items() if k != "name"}
    if "dtype" in kwargs:
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    if "axis_name" in fields:
        kwargs["axis_name"] = axis_name
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise UserError(f"config.model: {config.model.name} has no field(s) {unknown}; its "
                        f"fields: {sorted(fields - {'parent', 'name'})}")
    return cls(**kwargs)


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup over config.warmup_steps, then constant or cosine decay to 0 at the end."""
    if config.lr_schedule not in SCHEDULES:
        raise UserError(f"config.lr_schedule={config.lr_schedule!r}: choose one of {SCHEDULES}")
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                                  max(total_steps, warmup + 1))
    return optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup),
                                 optax.constant_schedule(config.learning_rate)], [warmup])


def create_optimizer(config: ml_collections.ConfigDict,
                     total_steps: int = 1) -> optax.GradientTransformation:
    """The optimizer; `total_steps` only shapes the learning-rate schedule, not the state."""
    lr = learning_rate_schedule(config, total_steps)
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return optax.chain(optax.add_decayed_weights(config.weight_decay),
                           optax.sgd(lr, momentum=0.9, nesterov=True))
    raise UserError(f"config.optimizer={config.optimizer!r}: choose one of {OPTIMIZERS}")


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array, total_steps: int = 1,
                       axis_name: str | None = parallel.AXIS) -> TrainState:
    """Initialises the model on a dummy [1, h, w, 1] batch and the optax optimizer.
    `axis_name`: see create_model."""
    model = create_model(config, axis_name)
    dummy = jnp.zeros((1, *config.image_size, 1), jnp.float32)
    variables = model.init(rng, dummy, train=False)
    tx = create_optimizer(config, total_steps)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}))


def apply_model(state: TrainState, params, images: jax.Array, *, train: bool,
                rng: jax.Array | None = None) -> tuple[dict, Any]:
    """(the model's outputs, checked; its new batch statistics) for `images` [B, H, W, 1].
    BatchNorm statistics are updated only when training a model that has them; `rng` feeds
    the model's "dropout" stream."""
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    rngs = None if rng is None else {"dropout": rng}
    if train and state.batch_stats:
        outputs, updates = state.apply_fn(variables, images, train=True, rngs=rngs,
                                          mutable=["batch_stats"])
        batch_stats = updates["batch_stats"]
    else:
        outputs, batch_stats = state.apply_fn(variables, images, train=train,
                                              rngs=rngs), state.batch_stats
    check_outputs(outputs, images)
    return outputs, batch_stats


def check_outputs(outputs: dict, images: jax.Array) -> None:
    """The model contract, at trace time (chex; nothing runs on the device)."""
    if not isinstance(outputs, dict) or "logits" not in outputs:
        raise TypeError(f"the model must return a dict with 'logits', got {type(outputs)}")
    chex.assert_shape(outputs["logits"], (*images.shape[:3], 1),
                      custom_message="model outputs['logits'] must be [B, H, W, 1]")
    if "presence" in outputs:
        chex.assert_shape(outputs["presence"], (images.shape[0],),
                          custom_message="model outputs['presence'] must be [B]")


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, loss_fn: losses.LossFn,
               axis_name: str | None = None,
               batch_transform: Callable | None = None) -> tuple[TrainState, dict]:
    """One optimisation step, a pure function: (new state, metrics).

    batch: image [b, h, w, 1] float32, mask [b, h, w, 1] float32. `loss_fn(outputs, batch)` ->
    [b] (losses.from_config). `rng` feeds `batch_transform(batch, rng) -> batch` (applied
    first, on the device) and the model's dropout. With `axis_name` None it runs under plain
    jax.jit; with the mapped axis of shard_map or pmap, gradients and metrics are averaged over
    it and each device draws its own randomness, so with synchronised BatchNorm the update
    equals one on the whole global batch on a single device.
    """
    if axis_name is not None:
        rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
    transform_rng, model_rng = jax.random.split(rng)
    if batch_transform is not None:
        batch = {**batch, **{k: v for k, v in batch_transform(batch, transform_rng).items()
                              if k in BATCH_KEYS}}

    def objective(params):
        outputs, batch_stats = apply_model(state, params, batch["image"], train=True,
                                           rng=model_rng)
        return loss_fn(outputs, batch).mean(), (outputs["logits"], batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    if axis_name is not None:
        grads = lax.pmean(grads, axis_name)
    finite = jnp.isfinite(loss) & jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    if axis_name is not None:
        finite = lax.pmin(finite.astype(jnp.float32), axis_name) == 1.0
    updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    # A non-finite update is never applied: the state stays as it was.
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    hard = logits[..., 0] > 0
    step_metrics = {
        "loss": loss,
        "dice_model_resolution": metrics.dice_per_image(hard, batch["mask"][..., 0] > 0.5).mean(),
    }
    if axis_name is not None:
        step_metrics = lax.pmean(step_metrics, axis_name)
    return state, {**step_metrics, "finite": finite.astype(jnp.float32)}


TTA_CHOICES = ("none", "hflip")


def predict_step(state: TrainState, batch: dict, *, tta: str = "none") -> dict:
    """image [b, h, w, 1] -> float32 {"logits": [b, h, w] at model resolution, "probs": [b,
    420, 580] nerve probabilities at full resolution, "presence": [b] probability that the frame
    shows a nerve (1 without a presence head)}.

    tta="hflip" averages the probabilities (and presence) of each image and of its mirror
    image, mirrored back; "logits" are then the logits of the averaged probabilities.
    """
    def once(images):
        outputs, _ = apply_model(state, state.params, images, train=False)
        logits = outputs["logits"]
        presence = (jax.nn.sigmoid(outputs["presence"].astype(jnp.float32))
                    if "presence" in outputs else jnp.ones(logits.shape[0], jnp.float32))
        return logits[..., 0].astype(jnp.float32), presence

    logits, presence = once(batch["image"])
    if tta == "hflip":
        mirrored_logits, mirrored_presence = once(batch["image"][:, :, ::-1])
        logits = postprocess.mean_probability_logit(
            jnp.stack([logits, mirrored_logits[:, :, ::-1]]))
        presence = (presence + mirrored_presence) / 2
    elif tta != "none":
        raise ValueError(f"tta={tta!r}: choose one of {TTA_CHOICES}")
    probs = postprocess.full_resolution_probabilities(logits[..., None])
    return {"logits": logits, "probs": probs, "presence": presence}


# Sums eval_step always reports; config.metrics may not reuse these names.
BUILT_IN_SUMS = ("dice", "empty_dice", "count")


def eval_step(state: TrainState, batch: dict, *, threshold: float, min_area: int,
              presence_threshold: float = 0.5, metric_fns: Mapping[str, Callable] | None = None,
              axis_name: str | None = None) -> dict:
    """Sums over the valid frames of the batch, at full 420x580 resolution: the Kaggle Dice
    ("dice"), the all-empty baseline ("empty_dice"), each of `metric_fns` (metrics.from_config)
    and "count"; summed over `axis_name` when given."""
    predictions = predict_step(state, batch)
    masks = postprocess.masks_from_probabilities(predictions["probs"], threshold, min_area,
                                                 predictions["presence"], presence_threshold)
    valid = batch["valid"].astype(jnp.float32)
    per_frame = {
        "dice": metrics.dice_per_image(masks, batch["mask_full"]),
        "empty_dice": metrics.empty_baseline_per_image(batch["mask_full"]),
    }
    scored = {**predictions, "masks": masks}
    for name, fn in (metric_fns or {}).items():
        values = fn(scored, batch)
        chex.assert_shape(values, valid.shape,
                          custom_message=f"metric {name!r} must return one value per frame")
        per_frame[name] = values.astype(jnp.float32)
    sums = {name: jnp.sum(values * valid) for name, values in per_frame.items()}
    sums["count"] = jnp.sum(valid)
    return sums if axis_name is None else lax.psum(sums, axis_name)


def batch_transform_from_config(config: ml_collections.ConfigDict) -> Callable | None:
    """config.batch_transform ("package.module:function", "" for none), bound like a loss (its
    keyword-only parameters from the config fields of the same name and
    config.batch_transform_args): `(batch, rng) -> batch`."""
    if not config.batch_transform:
        return None
    fn = registry.resolve(config.batch_transform, {}, "config.batch_transform")
    return registry.bind(fn, config, config.batch_transform_args)


def contract_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Traces the model, loss, metrics and batch transform of `config` abstractly on dummy
    inputs of config.image_size (jax.eval_shape: nothing is computed), so that code breaking
    its contract is reported before any data work, naming the config field."""
    h, w = config.image_size
    images = jax.ShapeDtypeStruct((2, h, w, 1), jnp.float32)
    batch = {"image": images, "mask": images}
    try:
        model = create_model(config, axis_name=None)
        outputs = jax.eval_shape(
            lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0], images)
        check_outputs(outputs, images)
    except Exception as e:  # The user's module may fail in any way: report it, named.
        return [f"config.model.name={config.model.name!r}: {type(e).__name__}: {e}"]
    problems = []
    try:
        jax.eval_shape(losses.from_config(config), outputs, batch)
    except Exception as e:
        problems.append(f"config.loss={config.loss!r}: {type(e).__name__}: {e}")
    full = jax.ShapeDtypeStruct((2, 420, 580), jnp.float32)
    predictions = {"masks": jax.ShapeDtypeStruct((2, 420, 580), jnp.bool_), "probs": full,
                   "presence": jax.ShapeDtypeStruct((2,), jnp.float32),
                   "logits": jax.ShapeDtypeStruct((2, h, w), jnp.float32)}
    eval_batch = {"image": images, "mask_full": predictions["masks"]}
    for name, fn in metrics.from_config(config).items():
        try:
            chex.assert_shape(jax.eval_shape(fn, predictions, eval_batch), (2,))
        except Exception as e:
            problems.append(f"config.metrics {name!r}: must return one value per frame, [B] "
                            f"({type(e).__name__}: {e})")
    transform = batch_transform_from_config(config)
    if transform is not None:
        try:
            out = jax.eval_shape(transform, batch, jax.random.key(0))
            chex.assert_trees_all_equal_shapes_and_dtypes(
                {k: out[k] for k in BATCH_KEYS}, {k: batch[k] for k in BATCH_KEYS})
        except Exception as e:
            problems.append(f"config.batch_transform={config.batch_transform!r}: must return "
                            f"image and mask as given ({type(e).__name__}: {e})")
    return problems


def per_device_train_step(config: ml_collections.ConfigDict,
                          axis_name: str | None = parallel.AXIS) -> Callable:
    """`(state, batch) -> (state, metrics)`: train_step with config's loss and batch transform;
    its randomness is a function of (config.seed, step), so a resumed run draws what an
    uninterrupted one draws."""
    loss_fn, transform = losses.from_config(config), batch_transform_from_config(config)

    def step(state, batch):
        rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
        return train_step(state, batch, rng, loss_fn=loss_fn, axis_name=axis_name,
                          batch_transform=transform)

    return step


def compiled_steps(config: ml_collections.ConfigDict, mesh) -> tuple:
    """(train, eval) step functions run over all devices per config.parallel."""
    kind = config.parallel
    train = parallel.parallelize(per_device_train_step(config), kind, mesh,
                                 out_batched=(False, False), donate_state=True)
    evaluate = parallel.parallelize(
        functools.partial(eval_step, axis_name=parallel.AXIS, threshold=config.threshold,
                          min_area=config.min_mask_area,
                          presence_threshold=config.presence_threshold,
                          metric_fns=metrics.from_config(config)),
        kind, mesh, out_batched=False)
    return train, evaluate


def prepare_data(config: ml_collections.ConfigDict, workdir: str):
    """The TFDS dataset of config.kaggle_dir, built (after every check) where
    tfds_builder.data_dir says unless it is there already; by process 0 only, which alone
    needs config.kaggle_dir, when there are several."""
    def prepare():
        fileio.check_folder(config.kaggle_dir, "config.kaggle_dir folder")
        return tfds_builder.prepare(config.kaggle_dir, data_dir)

    data_dir = tfds_builder.data_dir(config.tfds_data_dir, workdir)
    return tfds_builder.prepare_on_process_zero(prepare, data_dir)


def evaluate_subjects(evaluate, state, builder, config, subjects) -> dict:
    """Mean over the frames of `subjects` of every sum `evaluate` (eval_step) reports, as
    "val_<name>" (val_dice, val_empty_dice, config.metrics'), and "val_frames"."""
    totals = {}
    for batch in pipeline.eval_batches(builder, subjects, config.image_size,
                                       config.eval_batch_size):
        sums = jax.device_get(evaluate(state, batch))
        totals = {k: totals.get(k, 0.0) + float(v) for k, v in sums.items()}
    n = max(totals.get("count", 0.0), 1.0)
    return {**{f"val_{k}": v / n for k, v in totals.items() if k != "count"},
            "val_frames": int(totals.get("count", 0.0))}


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    with atomic_open(fileio.join(workdir, CONFIG_FILE)) as f:
        f.write(config.to_json(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = fileio.join(workdir, CONFIG_FILE)
    if not fileio.isfile(path):
        raise UserError(f"{workdir}: no {CONFIG_FILE}; is this a workdir written by "
                        "`nerve-jax train`?")
    try:
        saved = json.loads(fileio.read_text(path))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable config ({e})") from None
    # Devices are checked where batches are run: a workdir may be read on another machine.
    return config_util.checked(config_util.migrate(saved), devices=1, processes=1)


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
    builder = prepare_data(config, workdir)
    frames = pipeline.frames_per_subject(builder)
    train_subjects, val_subjects = pipeline.split_subjects(
        list(frames), config.num_folds, config.fold, config.split_seed)
    total_steps = num_train_steps(config, sum(frames[s] for s in train_subjects))
    is_main = jax.process_index() == 0
    if is_main:
        save_config(config, workdir)

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
    train, evaluate = compiled_steps(config, mesh)
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
            stop_now, save_due = distributed.any_process(stop.requested is not None,
                                         _checkpoint_due(config, step, last_save))
            if logging_step or eval_step_now or stop_now or save_due:
                guard.flush()  # Nothing is logged or saved after a non-finite step.
            if logging_step:
                scalars = {f"train_{k}": float(v) for k, v in
                           jax.device_get(step_metrics).items() if k != "finite"}
                log.write(step, scalars)
                progress.set_postfix(loss=f"{scalars['train_loss']:.4f}")
            saved = False
            if eval_step_now:
                val_metrics = evaluate_subjects(evaluate, state, builder, config, val_subjects)
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


def _checkpoint_due(config, step: int, last_save: float) -> bool:
    """A "latest" checkpoint by config.checkpoint_every_steps or _minutes (0: off), on this
    process's clock (the loop agrees on it across processes)."""
    by_steps = config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
    minutes = config.checkpoint_every_minutes
    by_time = bool(minutes) and time.monotonic() - last_save >= 60 * minutes
    return bool(by_steps or by_time)


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
