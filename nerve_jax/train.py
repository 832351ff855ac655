"""TrainState, train_step, eval_step and train_and_evaluate(config, workdir)."""

import functools
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
import tensorflow as tf
from flax.training import train_state
from jax import lax
from tqdm import tqdm

from nerve_jax import checkpoint, config_util, losses, metrics, parallel, runtime
from nerve_jax.atomic import atomic_open
from nerve_jax.data import pipeline, tfds_builder
from nerve_jax.errors import UserError
from nerve_jax.models import unet
from nerve_jax.submit import postprocess

CONFIG_FILE = "config.json"


class TrainState(train_state.TrainState):
    batch_stats: Any


def create_model(config: ml_collections.ConfigDict) -> unet.UNet:
    unet.check_input_size(config.image_size, config.model.depth)
    return unet.UNet(
        depth=config.model.depth,
        base_features=config.model.base_features,
        upsample=config.model.upsample,
        presence_head=config.model.presence_head,
        dtype=jnp.dtype(config.model.dtype),
        axis_name=parallel.AXIS,
    )


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


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array,
                       total_steps: int = 1) -> TrainState:
    """Initialises the model on a dummy [1, h, w, 1] batch and the optax optimizer."""
    model = create_model(config)
    dummy = jnp.zeros((1, *config.image_size, 1), jnp.float32)
    variables = model.init(rng, dummy, train=False)
    tx = create_optimizer(config, total_steps)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables["batch_stats"])


def train_step(state: TrainState, batch: dict, *, axis_name: str, dice_smooth: float = 1.0,
               presence_weight: float = 0.0,
               pixel_bce_weight: float = 0.0) -> tuple[TrainState, dict]:
    """One optimisation step on this device's part of the batch.

    batch: image [b, h, w, 1] float32, mask [b, h, w, 1] float32. Gradients and metrics are
    averaged over `axis_name`; BatchNorm statistics are averaged inside the model (synchronised
    BN), so the update equals one on the whole global batch on a single device.
    """
    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        (logits, presence), updates = state.apply_fn(variables, batch["image"], train=True,
                                                     mutable=["batch_stats"])
        loss = losses.total_loss(logits, presence, batch["mask"], dice_smooth=dice_smooth,
                                 presence_weight=presence_weight,
                                 pixel_bce_weight=pixel_bce_weight).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, axis_name)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    hard = logits[..., 0] > 0
    step_metrics = {
        "loss": loss,
        "dice_model_resolution": metrics.dice_per_image(hard, batch["mask"][..., 0] > 0.5).mean(),
    }
    return state, lax.pmean(step_metrics, axis_name)


TTA_CHOICES = ("none", "hflip")


def predict_step(state: TrainState, batch: dict, *, tta: str = "none") -> dict:
    """image [b, h, w, 1] -> float32 {"logits": [b, h, w] at model resolution, "probs": [b,
    420, 580] nerve probabilities at full resolution, "presence": [b] probability that the frame
    shows a nerve (1 without a presence head)}.

    tta="hflip" averages the probabilities (and presence) of each image and of its mirror
    image, mirrored back; "logits" are then the logits of the averaged probabilities.
    """
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def once(images):
        logits, presence = state.apply_fn(variables, images, train=False)
        presence = (jnp.ones(logits.shape[0], jnp.float32) if presence is None
                    else jax.nn.sigmoid(presence.astype(jnp.float32)))
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


def eval_step(state: TrainState, batch: dict, *, axis_name: str, threshold: float,
              min_area: int, presence_threshold: float = 0.5) -> dict:
    """Sums of the Kaggle Dice (model and all-empty baseline) over the valid frames of the
    batch, at full 420x580 resolution, summed over `axis_name`."""
    predictions = predict_step(state, batch)
    masks = postprocess.masks_from_probabilities(predictions["probs"], threshold, min_area,
                                                 predictions["presence"], presence_threshold)
    valid = batch["valid"].astype(jnp.float32)
    sums = {
        "dice": jnp.sum(metrics.dice_per_image(masks, batch["mask_full"]) * valid),
        "empty_dice": jnp.sum(metrics.empty_baseline_per_image(batch["mask_full"]) * valid),
        "count": jnp.sum(valid),
    }
    return lax.psum(sums, axis_name)


def compiled_steps(config: ml_collections.ConfigDict, mesh) -> tuple:
    """(train, eval) step functions run over all devices per config.parallel."""
    kind = config.parallel
    train = parallel.parallelize(
        functools.partial(train_step, axis_name=parallel.AXIS, dice_smooth=config.dice_smooth,
                          presence_weight=config.presence_weight,
                          pixel_bce_weight=config.pixel_bce_weight),
        kind, mesh, out_batched=(False, False), donate_state=True)
    evaluate = parallel.parallelize(
        functools.partial(eval_step, axis_name=parallel.AXIS, threshold=config.threshold,
                          min_area=config.min_mask_area,
                          presence_threshold=config.presence_threshold),
        kind, mesh, out_batched=False)
    return train, evaluate


def prepare_data(config: ml_collections.ConfigDict, workdir: str):
    """The TFDS dataset of config.kaggle_dir, built (after every check) where
    tfds_builder.data_dir says unless it is there already."""
    if not os.path.isdir(config.kaggle_dir):
        raise UserError(f"{config.kaggle_dir or '(empty)'}: config.kaggle_dir folder not found")
    data_dir = tfds_builder.data_dir(config.tfds_data_dir, workdir)
    return tfds_builder.prepare(config.kaggle_dir, data_dir)


def evaluate_subjects(evaluate, state, builder, config, subjects) -> dict:
    """Kaggle Dice and all-empty baseline, mean over the frames of `subjects`."""
    totals = {"dice": 0.0, "empty_dice": 0.0, "count": 0.0}
    for batch in pipeline.eval_batches(builder, subjects, config.image_size,
                                       config.eval_batch_size):
        sums = jax.device_get(evaluate(state, batch))
        totals = {k: totals[k] + float(sums[k]) for k in totals}
    n = max(totals["count"], 1.0)
    return {"val_dice": totals["dice"] / n, "val_empty_dice": totals["empty_dice"] / n,
            "val_frames": int(totals["count"])}


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    with atomic_open(os.path.join(workdir, CONFIG_FILE)) as f:
        f.write(config.to_json(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{workdir}: no {CONFIG_FILE}; is this a workdir written by "
                        "`nerve-jax train`?")
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable config ({e})") from None
    # Devices are checked where batches are run: a workdir may be read on another machine.
    return config_util.checked(config_util.migrate(saved), devices=1, processes=1)


class MetricLog:
    """Writes scalars to TensorBoard (workdir/tensorboard) and to workdir/metrics.jsonl."""

    def __init__(self, workdir: str, enabled: bool):
        self.enabled = enabled
        if enabled:
            self.writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
            self.path = os.path.join(workdir, "metrics.jsonl")

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        with self.writer.as_default():
            for name, value in scalars.items():
                tf.summary.scalar(name, value, step=step)
        self.writer.flush()
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    """Trains on the training subjects, evaluating and checkpointing on the validation subjects.

    Resumes from the latest checkpoint in `workdir`.
    """
    config = config_util.checked(config, needs_data=True)  # Before any work.
    runtime.start_tensorflow()
    os.makedirs(workdir, exist_ok=True)
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
    start_step = mngr.latest_step() or 0
    if start_step:
        state = checkpoint.restore(mngr, start_step, state)
    train, evaluate = compiled_steps(config, mesh)
    log = MetricLog(workdir, enabled=is_main)
    batches = pipeline.train_batches(builder, train_subjects, config.image_size,
                                     config.batch_size, config.seed, start_step,
                                     config.shuffle_buffer, config.clean,
                                     config.duplicate_threshold, config.augment)
    val_metrics, eval_step = {}, -1
    best, patience = best_so_far(mngr), config.early_stopping_patience
    progress = _progress(start_step, total_steps, is_main)
    for step in range(start_step + 1, total_steps + 1):
        state, step_metrics = train(state, next(batches))
        progress.update(1)
        if step % config.log_every_steps == 0 or step == total_steps:
            scalars = {f"train_{k}": float(v) for k, v in jax.device_get(step_metrics).items()}
            log.write(step, scalars)
            progress.set_postfix(loss=f"{scalars['train_loss']:.4f}")
        if step % config.eval_every_steps == 0 or step == total_steps:
            val_metrics = evaluate_subjects(evaluate, state, builder, config, val_subjects)
            eval_step = step
            log.write(step, val_metrics)
            checkpoint.save(mngr, step, state, val_metrics["val_dice"])
            best = best.update(step, val_metrics["val_dice"])
            if patience_exhausted(step, best, patience, config.eval_every_steps):
                message = (f"early stopping at step {step}: no better validation Dice than "
                           f"{best.dice:.4f} (step {best.step}) for {patience} evaluations")
                if is_main:
                    progress.write(message)
                log.write(step, {"early_stopped": 1.0})
                break
    progress.close()
    mngr.wait_until_finished()
    return TrainResult(state, val_metrics, eval_step, best)


def _progress(start: int, total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, initial=start, desc="train", disable=not enabled, unit="step")
