"""Default training recipes per (model kind, dataset kind): the hyperparameters each committed
checkpoint was trained with, so `tandemseg train --model K --data D` alone reproduces it."""

from __future__ import annotations

from tandemseg.train.augment import AugmentConfig
from tandemseg.train.trainer import TrainConfig

# Corruptions the cloud model sees in training. The evaluation shifts (fog, gaussian_noise,
# motion_blur, dusk) are deliberately held out: their nearest relatives are here instead, so the
# cloud's robustness under the evaluation shifts is earned, not memorised.
CLOUD_TRAIN_CORRUPTIONS = (
    "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "snow", "frost",
    "brightness", "contrast", "pixelate", "jpeg_compression", "night",
)


def default_recipe(kind: str, data_kind: str) -> TrainConfig:
    """Hyperparameters for `kind` ('device'|'cloud') on `data_kind` ('synthetic', 'camvid', ...)."""
    synthetic = data_kind == "synthetic"
    if kind == "device":
        # Crops and epochs are sized for a 2-core CPU budget (about 40 s per CamVid epoch on one thread).
        aug = AugmentConfig(crop=(256, 352), scale_range=(0.5, 1.75), color_jitter=0.3)
        return TrainConfig(epochs=10 if synthetic else 50, batch_size=8, lr=3e-3, augment=aug, val_every=1 if synthetic else 5)
    aug = AugmentConfig(crop=(256, 320), scale_range=(0.5, 1.75), color_jitter=0.4, corruptions=CLOUD_TRAIN_CORRUPTIONS, corrupt_p=0.5)
    return TrainConfig(epochs=10 if synthetic else 30, batch_size=8, lr=2e-3, augment=aug, val_every=1 if synthetic else 3, val_limit=40 if synthetic else None)
