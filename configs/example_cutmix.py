"""The quickstart with CutMix on the device, examples/cutmix.py (docs/extending.md). On the real
data, set the same two fields on configs/default.py."""

import ml_collections

from configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.batch_transform = "examples.cutmix:cutmix"
    config.batch_transform_args = ml_collections.ConfigDict({"probability": 0.5})
    return config
