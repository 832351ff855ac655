import pytest

from nerve_jax import config_util
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
