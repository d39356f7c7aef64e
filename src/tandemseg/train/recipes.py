"""Default training recipes per (model kind, dataset kind): the hyperparameters of `tandemseg train --model K
--data D`. Every committed checkpoint's exact command (flags included) is the `recipe` in its card; the
CamVid cloud adds a second, warm-started stage (CLOUD_STAGE2_CORRUPTIONS, see docs/results/accuracy.md)."""

from __future__ import annotations

from tandemseg.train.augment import AugmentConfig
from tandemseg.train.trainer import TrainConfig

# Corruptions the cloud model sees in its default (stage-1) recipe: the evaluation shifts (fog, gaussian_noise,
# motion_blur, dusk) are held out, their nearest relatives are here instead. The synthetic cloud stops here.
CLOUD_TRAIN_CORRUPTIONS = (
    "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "snow", "frost",
    "brightness", "contrast", "pixelate", "jpeg_compression", "night",
)


# Stage 2 of the CamVid cloud (`--init-from` the stage-1 checkpoint, `--corruptions` these, p = 0.4): the cloud
# stands in for a big, broadly pretrained model, so it now sees the evaluation shift families too (on training
# frames, at random severities 1-5). glass_blur and elastic_transform stay unseen by every model, as a check.
CLOUD_STAGE2_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur", "snow", "frost",
    "fog", "brightness", "contrast", "pixelate", "jpeg_compression", "dusk", "night",
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
