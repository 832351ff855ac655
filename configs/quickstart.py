"""CPU-sized run on the synthetic data written by `nerve-jax synth` (a few minutes, 2 cores)."""

from configs import default


def get_config():
    config = default.get_config()
    config.image_size = (96, 128)
    config.num_folds = 4
    config.model.depth = 4
    config.model.base_features = 12
    config.batch_size = 16
    config.eval_batch_size = 32
    config.learning_rate = 3e-3
    config.warmup_steps = 20
    config.num_epochs = 12.0
    config.log_every_steps = 20
    config.eval_every_steps = 100
    return config
