"""The CPU recipe for the real data (--config.kaggle_dir=DIR): the best system the real-frame
ablation found (docs/ablation.md#real-frames: 0.7135 out-of-fold Kaggle Dice over 27 subjects,
against 0.4296 for the classic starter), for a machine without an accelerator.

A UNet of depth 4 with 12 base features at 96x128, augmentation on, 1,600 steps of 16 frames
with a cosine schedule from 3e-3, evaluated every 200 steps so that the best of 8 checkpoints
(by validation Dice) is the one evaluate, tune and predict use; then `nerve-jax tune`. The
budget is steps, so the training time does not grow with the number of frames: 796 s per
model on 2 CPU cores in the ablation (8 evaluations of ~130 frames included). On the full
download, from the rates measured here (not a timed full run): the TFDS build of 11,143 frames
at 50-70 frames/s, 3-4 min; training, ~12 min; 9 evaluations of ~1,130 validation frames at
~60 frames/s, ~3 min; tune, ~2 min; predicting 5,508 test images at ~60 images/s, ~2 min:
about 25 minutes, under an hour.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.image_size = (96, 128)
    config.model.depth = 4
    config.model.base_features = 12
    config.augment.enabled = True
    config.batch_size = 16
    config.eval_batch_size = 32
    config.learning_rate = 3e-3
    config.lr_schedule = "cosine"
    config.warmup_steps = 20
    config.num_train_steps = 1600
    config.eval_every_steps = 200
    config.log_every_steps = 50
    return config
