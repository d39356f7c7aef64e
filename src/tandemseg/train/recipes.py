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


# The embedded synthetic checkpoints keep the small from-scratch architectures (fast tests and demo); every
# other dataset gets the ImageNet-initialised EfficientNet-Lite models (the config defaults).
SYNTHETIC_MODELS: dict[str, dict] = {
    "device": {"encoder": "mobilenetv2"},
    "cloud": {"encoder": "resnet", "aspp_channels": 128, "decoder_channels": 64, "aspp_rates": [4, 8, 12]},
}


def default_model_config(kind: str, data_kind: str) -> dict:
    """Config overrides `tandemseg train --model kind` builds for `data_kind` (the card stores the full config)."""
    return dict(SYNTHETIC_MODELS[kind]) if data_kind == "synthetic" else {}


def default_recipe(kind: str, data_kind: str) -> TrainConfig:
    """Hyperparameters for `kind` ('device'|'cloud') on `data_kind` ('synthetic', 'camvid', ...)."""
    synthetic = data_kind == "synthetic"
    if kind == "device":
        if synthetic:
            aug = AugmentConfig(crop=(256, 352), scale_range=(0.5, 1.75), color_jitter=0.3)
            return TrainConfig(epochs=10, batch_size=8, lr=3e-3, augment=aug, val_every=1)
        # ImageNet Lite0 fine-tuned on whole frames (the device sees them at half resolution): stem and the
        # first two stages frozen, encoder at a quarter of the head's learning rate. About 3.3 min an epoch on 1 thread (measured).
        aug = AugmentConfig(crop=(360, 480), scale_range=(0.75, 1.5), color_jitter=0.2, hue=0.0)
        return TrainConfig(epochs=16, batch_size=8, lr=2e-3, augment=aug, val_every=1, freeze_stages=2, encoder_lr_mult=0.25)
    if synthetic:
        aug = AugmentConfig(crop=(256, 320), scale_range=(0.5, 1.75), color_jitter=0.4, corruptions=CLOUD_TRAIN_CORRUPTIONS, corrupt_p=0.5)
        return TrainConfig(epochs=10, batch_size=8, lr=2e-3, augment=aug, val_every=1, val_limit=40)
    # ImageNet Lite2 DeepLabV3+ on random scaled 256x320 crops; it stands in for a broadly pretrained cloud model,
    # so it trains with the evaluation shift families too (stated in docs/results/accuracy.md).
    aug = AugmentConfig(crop=(256, 320), scale_range=(0.5, 1.5), color_jitter=0.3, hue=0.0, corruptions=CLOUD_STAGE2_CORRUPTIONS, corrupt_p=0.4)
    return TrainConfig(epochs=10, batch_size=8, lr=2e-3, augment=aug, val_every=2, freeze_stages=2, encoder_lr_mult=0.25)
