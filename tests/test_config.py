import json

import ml_collections
import pytest

from nerve_jax import config_util, postprocess
from nerve_jax.errors import UserError


def test_overrides_parse_by_type(test_config):
    config = test_config()
    config_util.apply_overrides(config, [
        "--config.batch_size=16", "--config.image_size=64,96", "--config.learning_rate", "0.5",
        "--config.model.upsample=transpose", "--config.kaggle_dir=/data/x"])
    assert config.batch_size == 16
    assert tuple(config.image_size) == (64, 96)
    assert config.learning_rate == 0.5
    assert config.model.upsample == "transpose"
    assert config.kaggle_dir == "/data/x"


@pytest.mark.parametrize("arg,message", [
    ("--config.no_such=1", "no such config field"),
    ("--config.model.nope=1", "no such config field"),
    ("--config.batch_size=abc", "batch_size='abc'"),
    ("--batch_size=3", "unrecognised argument"),
])
def test_bad_overrides_are_named(test_config, arg, message):
    with pytest.raises(UserError, match=message):
        config_util.apply_overrides(test_config(), [arg])


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found"):
        config_util.load_config_file("configs/none.py")


def _problems(config, **kwargs) -> str:
    with pytest.raises(config_util.ConfigError) as error:
        config_util.check(config, **kwargs)
    return str(error.value)


def test_the_shipped_configs_pass(test_config):
    for name in ("default", "quickstart", "test", "starter", "example_gn_resunet"):
        config = config_util.load_config_file(f"configs/{name}.py")
        config_util.check(config, devices=8, processes=1)


@pytest.mark.parametrize("name", ["gpu", "tpu", "tpu_pod"])
def test_the_accelerator_configs_fit_every_host_they_name(name):
    """bf16; the global batch splits over 1 GPU, 1 TPU chip (Colab's v5e-1 or v6e-1), 4 or 8
    chips on one host (v5e/v6e hosts), 8 chips on 2 hosts and 16 on 4 (v5e slices)."""
    config = config_util.load_config_file(f"configs/{name}.py")
    assert config.model.dtype == "bfloat16"
    for devices, processes in [(1, 1), (4, 1), (8, 1), (8, 2), (16, 4)]:
        config_util.check(config, devices=devices, processes=processes)


def test_an_unknown_override_gets_a_suggestion(test_config):
    with pytest.raises(config_util.ConfigError,
                       match=r"--config.learing_rate: no such config field; did you mean "
                             r"config.learning_rate\?"):
        config_util.apply_overrides(test_config(), ["--config.learing_rate=0.1"])
    with pytest.raises(config_util.ConfigError, match=r"did you mean config.model.depth\?"):
        config_util.apply_overrides(test_config(), ["--config.model.dept=3"])


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", "8", "config.batch_size='8': expected a whole number"),
    ("batch_size", True, "config.batch_size=True: expected a whole number"),
    ("learning_rate", -0.1, "config.learning_rate=-0.1: expected a value >= 0"),
    ("dice_smooth", 0.0, "config.dice_smooth=0.0: expected a value > 0"),
    ("threshold", 1.5, "config.threshold=1.5: expected a value >= 0 and <= 1"),
    ("optimizer", "adam", "config.optimizer='adam': choose one of ('adamw', 'sgd')"),
    ("clean", "purge", "config.clean='purge': choose one of ('keep', 'drop', 'relabel')"),
    ("tta", "vflip", "config.tta='vflip': choose one of ('none', 'hflip')"),
    ("image_size", (32,), "config.image_size=(32,): expected two positive whole numbers"),
    ("fold", 2, "config.fold=2: must be below config.num_folds=2"),
    ("presence_weight", -1.0, "config.presence_weight=-1.0: expected a value >= 0"),
    ("early_stopping_patience", 1.5, "expected a whole number"),
    ("model.upsample", "nearest", "config.model.upsample='nearest': choose one of"),
    ("model.dtype", "float64", "config.model.dtype='float64': choose one of ('float32', "
                               "'bfloat16')"),
    ("model.presence_head", "yes", "config.model.presence_head='yes': expected true or false"),
    ("augment.rotation", 500.0, "config.augment.rotation=500.0: expected a number in [0, 180]"),
])
def test_each_bad_value_is_named_with_what_is_expected(test_config, field, value, message):
    # As a config file or a workdir's config.json may hold it: ConfigDict refuses to change a
    # field's type by assignment, not at creation.
    values = test_config().to_dict()
    *parents, leaf = field.split(".")
    node = values
    for part in parents:
        node = node[part]
    node[leaf] = value
    assert message in _problems(ml_collections.ConfigDict(values), devices=8, processes=1)


def test_image_size_against_depth_and_batches_against_devices_and_processes(test_config):
    config = test_config()
    config.image_size = (34, 48)  # 34 is not divisible by 2**2.
    config.batch_size = 12
    text = _problems(config, devices=8, processes=1)
    assert "config: 2 problem(s)" in text
    assert "config.image_size: image_size (34, 48) must be divisible by 2**depth = 4" in text
    assert "config.batch_size=12: must be divisible by the number of devices (8)" in text
    config = test_config()
    assert "config.eval_batch_size=8: must be divisible by the number of processes (3)" in (
        _problems(config, devices=1, processes=3))


def test_unknown_and_missing_fields_of_a_config_file(test_config):
    config = test_config()
    config.learnin_rate = 0.1
    del config.seed
    text = _problems(config, devices=8, processes=1)
    assert "config.learnin_rate: no such field; did you mean config.learning_rate?" in text
    assert "config.seed: missing" in text


def test_the_checked_config_is_locked(test_config):
    config = config_util.checked(test_config(), devices=8, processes=1)
    with pytest.raises(AttributeError, match="immutable"):
        config.batch_size = 16


def test_a_config_error_exits_2_before_any_work(tmp_path, capfd):
    from nerve_jax import cli

    workdir = tmp_path / "work"
    code = cli.main(["train", "--config", "configs/test.py", "--workdir", str(workdir),
                     "--config.kaggle_dir=/nowhere", "--config.optimizer=adam",
                     "--config.threshold=2"])
    err = capfd.readouterr().err
    assert code == 2
    assert "config: 2 problem(s)" in err and "Traceback" not in err
    assert not workdir.exists()
    code = cli.main(["train", "--config", "configs/test.py", "--workdir", str(workdir),
                     "--config.optimiser=sgd"])
    assert code == 2 and "did you mean config.optimizer?" in capfd.readouterr().err


def test_a_workdir_config_of_an_earlier_version_is_completed(test_config, tmp_path):

    saved = json.loads(test_config().to_json())
    for name in ("tta", "presence_weight", "pixel_bce_weight", "early_stopping_patience",
                 "min_component_area", "fill_holes", "augment"):
        del saved[name]
    del saved["model"]["presence_head"]
    (tmp_path / config_util.CONFIG_FILE).write_text(json.dumps(saved))
    config = config_util.load(str(tmp_path))
    assert (config.tta, config.presence_weight, config.model.presence_head) == ("none", 0.0, False)
    assert config.augment.enabled is False and config.fill_holes is False
    assert config.learning_rate == test_config().learning_rate


def test_migration_writes_the_values_earlier_versions_ran_with_not_todays_defaults(
        test_config, monkeypatch):
    """The oldest workdir config (none of the added fields) read back while every default
    that could leak in has changed."""
    from nerve_jax.data import augment

    monkeypatch.setattr(postprocess.Settings.__init__, "__defaults__",
                        (0.3, 99, True, True, True, 77, 0.9))
    monkeypatch.setattr(augment.Augmentation.__init__, "__defaults__",
                        (0.5, 30.0, (0.5, 2.0), 1.0, 0.5, (0.5, 2.0), (0.5, 2.0), "constant"))
    saved = json.loads(test_config().to_json())
    added = [name for _, fields in config_util.MIGRATIONS for name in fields]
    for name in added:
        *parents, leaf = name.split(".")
        node = saved
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    saved.pop("augment")
    flat = config_util.flatten(config_util.migrate(saved), leaves=config_util.FREE_FIELDS)
    got = {name: flat[name].to_dict() if isinstance(flat[name], ml_collections.ConfigDict)
           else flat[name] for name in added}
    assert got == {
        "model.presence_head": False, "presence_weight": 0.0, "pixel_bce_weight": 0.0,
        "early_stopping_patience": 0, "tta": "none", "min_component_area": 0,
        "largest_component_only": False, "fill_holes": False, "ellipse_fit": False,
        "presence_threshold": 0.5, "augment.enabled": False, "augment.shift": 0.0,
        "augment.rotation": 0.0, "augment.zoom": [1.0, 1.0], "augment.flip": 0.0,
        "augment.brightness": 0.0, "augment.contrast": [1.0, 1.0],
        "augment.gamma": [1.0, 1.0], "augment.fill_mode": "reflect", "model.name": "unet",
        "loss": "soft_dice+bce", "loss_args": {}, "metrics": [], "batch_transform": "",
        "batch_transform_args": {}, "checkpoint_every_steps": 0,
        "checkpoint_every_minutes": 0.0, "skip_nonfinite_steps": 0, "model.norm": "batch",
        "model.input_mean": 0.0, "model.input_std": 1.0}


def test_an_unreadable_workdir_config_is_named(tmp_path):

    (tmp_path / config_util.CONFIG_FILE).write_text("{not json")
    with pytest.raises(UserError, match=r"config.json: unreadable config"):
        config_util.load(str(tmp_path))
