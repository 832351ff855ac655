"""The research API: a loss, a model and a metric defined here, in the test file, and chosen by
config strings only; the pure train step under plain jax.jit; and bad choices refused up front."""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nerve_jax import (
    cli,
    config_util,
    evaluation,
    losses,
    metrics,
    parallel,
    postprocess,
    registry,
    step,
    train,
)
from nerve_jax.submit import inference

HERE = "tests.test_research_api"


def area_loss(outputs: dict, batch: dict, *, weight: float = 1.0) -> jax.Array:
    """|predicted area - true area| / pixels, per frame: a loss a user might write."""
    probs = jax.nn.sigmoid(outputs["logits"])
    return weight * jnp.abs(probs - batch["mask"]).mean(axis=(1, 2, 3))


def wrong_shape_loss(outputs: dict, batch: dict) -> jax.Array:
    return jax.nn.sigmoid(outputs["logits"])  # [B, H, W, 1], not [B].


def predicted_fraction(predictions: dict, batch: dict) -> jax.Array:
    """Share of each frame's pixels predicted as nerve."""
    return predictions["masks"].mean(axis=(1, 2)).astype(jnp.float32)


class TinyNet(nn.Module):
    """No BatchNorm, and dropout: a model with no batch_stats that needs an rng."""

    features: int = 4
    dropout: float = 0.5
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(self.features, (3, 3))(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return {"logits": nn.Conv(1, (1, 1))(x)}


def _user_config(test_config):
    config = test_config()
    config.loss = f"{HERE}:area_loss"
    config.loss_args.weight = 2.0
    config.model = {"name": f"{HERE}:TinyNet", "features": 4, "dropout": 0.5,
                    "dtype": "float32"}
    config.metrics = ("iou", f"{HERE}:predicted_fraction")
    return config


def test_config_strings_resolve_to_the_users_functions(test_config):
    config = _user_config(test_config)
    config_util.check(config, devices=8, processes=1)
    model = step.create_model(config)
    assert (type(model).__module__, type(model).__name__) == (HERE, "TinyNet")
    assert set(metrics.from_config(config)) == {"iou", "predicted_fraction"}
    loss = losses.from_config(config)
    logits = jnp.zeros((2, 4, 4, 1))
    mask = jnp.ones((2, 4, 4, 1))
    np.testing.assert_allclose(loss({"logits": logits}, {"mask": mask}), [1.0, 1.0])  # 2 x 0.5.


@pytest.mark.slow
def test_the_pure_train_step_runs_under_plain_jit_and_equals_the_sharded_one(test_config):
    config = test_config()
    config.optimizer, config.learning_rate = "sgd", 0.1  # Updates proportional to gradients.
    h, w = config.image_size
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((8, h, w, 1), dtype=np.float32),
             "mask": (rng.random((8, h, w, 1)) > 0.7).astype(np.float32)}
    key = jax.random.key(7)
    plain_state = step.create_train_state(config, jax.random.key(0), axis_name=None)
    train_fn = jax.jit(functools.partial(step.train_step, loss_fn=losses.from_config(config)))
    plain, plain_metrics = train_fn(plain_state, batch, key)

    mesh = parallel.make_mesh(jax.devices()[:1])
    state = parallel.replicate(step.create_train_state(config, jax.random.key(0)), mesh)
    sharded_step = parallel.parallelize(
        lambda s, b: step.train_step(s, b, key, loss_fn=losses.from_config(config),
                                      axis_name=parallel.AXIS),
        "shard_map", mesh, out_batched=(False, False))
    sharded, sharded_metrics = sharded_step(state, batch)
    # One device: the 'batch' axis has one member, so only the rng fold-in differs, and the
    # UNet draws no randomness.
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(sharded.params),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(plain_metrics["loss"]) == pytest.approx(float(sharded_metrics["loss"]),
                                                         rel=1e-6)


@pytest.mark.slow
@pytest.mark.mutation
def test_the_rng_drives_dropout_and_batchless_models_train(test_config):
    config = _user_config(test_config)
    state = step.create_train_state(config, jax.random.key(0), axis_name=None)
    assert state.batch_stats == {}
    h, w = config.image_size
    batch = {"image": np.ones((2, h, w, 1), np.float32), "mask": np.ones((2, h, w, 1), np.float32)}
    train_fn = jax.jit(functools.partial(step.train_step, loss_fn=losses.from_config(config)))
    a, _ = train_fn(state, batch, jax.random.key(1))
    b, _ = train_fn(state, batch, jax.random.key(1))
    c, _ = train_fn(state, batch, jax.random.key(2))
    same = jax.tree.map(np.array_equal, a.params, b.params)
    differ = jax.tree.map(lambda x, y: not np.array_equal(x, y), a.params, c.params)
    assert all(jax.tree.leaves(same)) and any(jax.tree.leaves(differ))


@pytest.mark.slow
@pytest.mark.mutation
def test_a_metric_is_averaged_over_the_valid_frames_of_every_device(test_config):
    config = test_config()
    config.metrics = (f"{HERE}:predicted_fraction",)
    state = step.create_train_state(config, jax.random.key(0))
    h, w = config.image_size
    batch = {"image": np.random.default_rng(0).random((8, h, w, 1), dtype=np.float32),
             "mask_full": np.zeros((8, 420, 580), bool), "valid": np.arange(8) < 6,
             "subject": np.ones(8, np.int32), "frame": np.arange(8, dtype=np.int32)}
    mesh = parallel.make_mesh()
    evaluator = evaluation.Evaluator(config, mesh, postprocess.Settings(threshold=0.5), "test")
    scores = evaluator.run(parallel.replicate(state, mesh), [batch]).scores
    probs = jax.device_get(jax.jit(step.predict_step)(state, batch))["probs"]
    want = (probs[:6] > 0.5).mean(axis=(1, 2)).mean()
    assert scores["val_frames"] == 6
    assert scores["val_predicted_fraction"] == pytest.approx(float(want), rel=1e-5)


@pytest.mark.slow
def test_a_users_model_loss_and_metric_train_evaluate_checkpoint_and_predict(
        test_config, tiny_kaggle_dir, tmp_path):
    config = _user_config(test_config)
    config.kaggle_dir, config.tfds_data_dir = tiny_kaggle_dir, str(tmp_path / "tfds")
    config.num_train_steps = 2
    workdir = str(tmp_path / "work")
    result = train.train_and_evaluate(config, workdir)
    assert set(result.val_metrics) >= {"val_dice", "val_iou", "val_predicted_fraction"}
    assert result.state.batch_stats == {}
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert any("val_predicted_fraction" in r for r in records)
    evaluated = inference.evaluate(workdir)  # Restores the checkpoint: no batch_stats there.
    assert 0.0 <= evaluated["val_predicted_fraction"] <= 1.0
    assert json.load(open(os.path.join(workdir, inference.EVAL_FILE)))["metrics"] == [
        "iou", "predicted_fraction"]
    out = str(tmp_path / "submission.csv")
    assert cli.main(["predict", "--workdir", workdir, "--out", out]) == 0


@pytest.mark.parametrize("override, message", [
    ("--config.loss=focal", "config.loss='focal': not a registered name (batch_dice, "
                            "soft_dice, soft_dice+bce) nor package.module:attribute"),
    ("--config.loss=no_such_module:focal", "config.loss='no_such_module:focal': cannot import "
                                           "module 'no_such_module' (ModuleNotFoundError"),
    (f"--config.loss={HERE}:nothing", f"module {HERE} has no attribute 'nothing'"),
    (f"--config.loss={HERE}:wrong_shape_loss", "must return one value per example, [B]"),
    ("--config.model.name=resnet", "config.model.name='resnet': not a registered name (unet)"),
    ("--config.metrics=iou,hausdorff", "config.metrics='hausdorff': not a registered name "
                                       "(iou, presence_accuracy)"),
    ("--config.metrics=dice", "config.metrics: ['dice'] repeated or taken by the built-in"),
])
def test_bad_choices_exit_2_before_any_work_with_what_is_known(override, message, tmp_path,
                                                               capfd):
    workdir = tmp_path / "work"
    code = cli.main(["train", "--config", "configs/test.py", "--workdir", str(workdir),
                     "--config.kaggle_dir=/nowhere", override])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert message in err
    assert not workdir.exists()


def test_registry_names_the_kind_and_the_module():
    with pytest.raises(registry.RegistryError, match=r"config.loss='x:y': cannot import module"):
        registry.resolve("x:y", {}, "config.loss")
    assert registry.resolve("soft_dice", losses.LOSSES, "config.loss") is losses.soft_dice
    assert registry.display_name("pkg.mod:fn") == "fn"
