"""The step layer: TrainState, the model/optimizer/schedule registries and factories, and the
pure per-device steps that training, evaluation, prediction and ahead-of-time compilation share.

`train_step(state, batch, rng, *, loss_fn, axis_name=None)` runs under plain jax.jit on one
device, and under shard_map or pmap (parallel.py) with the mapped axis named. `predict_step`
decodes the model's outputs on the device to full-resolution (420x580) probabilities;
`eval_step` adds what the evaluator scores them against. The model, loss, metrics and batch
transform come from the config by name (registry.py); `contract_problems` traces them
abstractly before any work.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state
from jax import lax

from nerve_jax import losses, metrics, parallel, registry
from nerve_jax.data import kaggle
from nerve_jax.errors import UserError


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
    # One compiled program, not op-by-op dispatch: about half the time of a cold start on the CPU.
    variables = jax.jit(functools.partial(model.init, train=False))(rng, dummy)
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



def full_resolution_probabilities(logits: jax.Array) -> jax.Array:
    """Logits [B, h, w, 1] at model resolution -> nerve probabilities [B, 420, 580] float32."""
    probs = jax.nn.sigmoid(logits[..., 0].astype(jnp.float32))
    return jax.image.resize(probs, (probs.shape[0], kaggle.HEIGHT, kaggle.WIDTH), "linear")


def mean_probability_logit(logits: jax.Array, axis: int = 0) -> jax.Array:
    """The logit of the mean of sigmoid(logits) over `axis`, computed in log space (stable
    where the probabilities round to 0 or 1 in float32)."""
    return (jax.nn.logsumexp(jax.nn.log_sigmoid(logits), axis=axis)
            - jax.nn.logsumexp(jax.nn.log_sigmoid(-logits), axis=axis))


def masks_from_probabilities(probs: jax.Array, threshold: float, min_area: int,
                             presence: jax.Array | None = None,
                             presence_threshold: float = 0.5) -> jax.Array:
    """[B, H, W] probabilities -> [B, H, W] bool masks, on the device. A mask with fewer than
    `min_area` pixels is emptied, and so is every mask whose frame's presence probability [B]
    is below `presence_threshold`: the masks of postprocess.apply with only those steps."""
    masks = probs > threshold
    keep = jnp.sum(masks, axis=(1, 2)) >= min_area
    if presence is not None:
        keep = keep & (presence >= presence_threshold)
    return masks & keep[:, None, None]

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
        logits = mean_probability_logit(
            jnp.stack([logits, mirrored_logits[:, :, ::-1]]))
        presence = (presence + mirrored_presence) / 2
    elif tta != "none":
        raise ValueError(f"tta={tta!r}: choose one of {TTA_CHOICES}")
    probs = full_resolution_probabilities(logits[..., None])
    return {"logits": logits, "probs": probs, "presence": presence}



# The batch fields the evaluator scores predictions against and keeps with them.
SCORED_BATCH_KEYS = ("image", "mask_full", "subject", "frame", "valid")


def eval_step(state: TrainState, batch: dict, *, tta: str = "none") -> dict:
    """predict_step's outputs with the batch's SCORED_BATCH_KEYS, per example: what the
    evaluator (evaluate.py) scores on the host with the post-processing it is given."""
    return {**predict_step(state, batch, tta=tta),
            **{k: batch[k] for k in SCORED_BATCH_KEYS}}


def batch_transform_from_config(config: ml_collections.ConfigDict) -> Callable | None:
    """config.batch_transform ("package.module:function", "" for none), bound like a loss (its
    keyword-only parameters from the config fields of the same name and
    config.batch_transform_args): `(batch, rng) -> batch`."""
    if not config.batch_transform:
        return None
    fn = registry.resolve(config.batch_transform, {}, "config.batch_transform")
    return registry.bind(fn, config, config.batch_transform_args)


# What a command resolves and traces of a config: training all of it, evaluation the model and
# its metrics, prediction the model alone (so a workdir trained with a loss or batch transform
# that this shell cannot import still evaluates and predicts).
FOR_TRAINING = ("model", "loss", "metrics", "batch_transform")
FOR_EVALUATION = ("model", "metrics")
FOR_PREDICTION = ("model",)


def contract_problems(config: ml_collections.ConfigDict,
                      parts: Sequence[str] = FOR_TRAINING) -> list[str]:
    """Traces the `parts` of `config` (model, loss, metrics, batch_transform) abstractly on
    dummy inputs of config.image_size (jax.eval_shape: nothing is computed), so that code
    breaking its contract is reported before any data work, naming the config field."""
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
    if "loss" in parts:
        problems += _loss_problems(config, outputs, batch)
    if "metrics" in parts:
        problems += _metric_problems(config, images)
    if "batch_transform" in parts:
        problems += _transform_problems(config, batch)
    return problems


def _loss_problems(config, outputs, batch) -> list[str]:
    try:
        jax.eval_shape(losses.from_config(config), outputs, batch)
    except Exception as e:
        return [f"config.loss={config.loss!r}: {type(e).__name__}: {e}"]
    return []


def _metric_problems(config, images) -> list[str]:
    n, h, w, _ = images.shape
    full = jax.ShapeDtypeStruct((n, kaggle.HEIGHT, kaggle.WIDTH), jnp.float32)
    masks = jax.ShapeDtypeStruct(full.shape, jnp.bool_)
    predictions = {"masks": masks, "probs": full,
                   "presence": jax.ShapeDtypeStruct((n,), jnp.float32),
                   "logits": jax.ShapeDtypeStruct((n, h, w), jnp.float32)}
    eval_batch = {"image": images, "mask_full": masks}
    problems = []
    for name, fn in metrics.from_config(config).items():
        try:
            chex.assert_shape(jax.eval_shape(fn, predictions, eval_batch), (n,))
        except Exception as e:
            problems.append(f"config.metrics {name!r}: must return one value per frame, [B] "
                            f"({type(e).__name__}: {e})")
    return problems


def _transform_problems(config, batch) -> list[str]:
    transform = batch_transform_from_config(config)
    if transform is None:
        return []
    try:
        out = jax.eval_shape(transform, batch, jax.random.key(0))
        chex.assert_trees_all_equal_shapes_and_dtypes(
            {k: out[k] for k in BATCH_KEYS}, {k: batch[k] for k in BATCH_KEYS})
    except Exception as e:
        return [f"config.batch_transform={config.batch_transform!r}: must return image and "
                f"mask as given ({type(e).__name__}: {e})"]
    return []


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



def abstract_train_state(config: ml_collections.ConfigDict, mesh,
                         total_steps: int = 1) -> TrainState:
    """The TrainState's shapes and dtypes, replicated on `mesh` (jax.eval_shape: nothing is
    initialised), for restoring a checkpoint or compiling ahead of time."""
    abstract = jax.eval_shape(
        lambda: create_train_state(config, jax.random.key(0), total_steps))
    replicated = parallel.replicated_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)


def parallel_train_step(config: ml_collections.ConfigDict, mesh) -> Callable:
    """per_device_train_step over every device of `mesh` per config.parallel, the state
    donated: `(replicated state, this process's batch) -> (state, metrics)`."""
    return parallel.parallelize(per_device_train_step(config), config.parallel, mesh,
                                out_batched=(False, False), donate_state=True)


def parallel_eval_step(config: ml_collections.ConfigDict, mesh, tta: str = "none") -> Callable:
    """eval_step over every device of `mesh`: per-example outputs, split on 'batch'."""
    return parallel.parallelize(functools.partial(eval_step, tta=tta), config.parallel, mesh,
                                out_batched=True)


def parallel_predict_step(config: ml_collections.ConfigDict, mesh,
                          tta: str = "none") -> Callable:
    """predict_step over every device of `mesh` for test frames: per example "probs" [420,
    580], "presence" and the batch's "id" (-1 for padding)."""
    def step(state, batch):
        out = predict_step(state, batch, tta=tta)
        return {"probs": out["probs"], "presence": out["presence"], "id": batch["id"]}

    return parallel.parallelize(step, config.parallel, mesh, out_batched=True)
