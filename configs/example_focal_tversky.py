"""The quickstart with the focal Tversky loss of examples/focal_tversky.py (docs/extending.md).
On the real data, set the same two fields on configs/default.py."""

import ml_collections

from configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.loss = "examples.focal_tversky:focal_tversky"
    config.loss_args = ml_collections.ConfigDict(
        {"alpha": 0.7, "beta": 0.3, "gamma": 0.75, "smooth": 100.0})
    return config
