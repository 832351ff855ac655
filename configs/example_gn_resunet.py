"""The quickstart with the GroupNorm residual UNet of examples/gn_resunet.py, a model without
BatchNorm (docs/extending.md). On the real data, set the same fields on configs/default.py."""

from configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.model.name = "examples.gn_resunet:GroupNormResUNet"
    config.model.groups = 4  # base_features (12) must be divisible by it.
    for unet_only in ("norm", "input_mean", "input_std"):
        del config.model[unet_only]
    return config
