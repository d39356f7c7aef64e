"""Cityscapes fine annotations (`leftImg8bit/` + `gtFine/`), labelIds mapped to the 19 evaluation trainIds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tandemseg.data.base import Sample, check_pair, read_label_png, read_rgb, require_dir
from tandemseg.data.classes import CITYSCAPES, IGNORE_INDEX
from tandemseg.errors import DataError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"

# labelId -> trainId for the 19 evaluated classes (cityscapesScripts `labels.py`); every other id is ignored.
LABEL_TO_TRAIN: dict[int, int] = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}


def _build_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


_LUT = _build_lut()


def label_ids_to_train_ids(raw: np.ndarray) -> np.ndarray:
    """Map a Cityscapes labelIds map to trainIds; ids outside the 19 classes (or outside 0..255) become 255."""
    inside = (raw >= 0) & (raw < _LUT.size)
    return np.where(inside, _LUT[np.clip(raw, 0, _LUT.size - 1)], IGNORE_INDEX).astype(np.int64)


def _available_splits(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


class Cityscapes:
    """One Cityscapes split: every `<city>/*_leftImg8bit.png` with its `*_gtFine_labelIds.png`."""

    classes = CITYSCAPES

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root = require_dir(Path(root), "Cityscapes root")
        self.split = split
        images_root = require_dir(self.root / "leftImg8bit", "Cityscapes image (leftImg8bit)")
        labels_root = require_dir(self.root / "gtFine", "Cityscapes annotation (gtFine)")
        image_dir = images_root / split
        if not image_dir.is_dir():
            have = ", ".join(_available_splits(images_root)) or "none"
            raise DataError(f"Cityscapes split {split!r} not found: {image_dir} does not exist (splits present: {have})")
        label_dir = require_dir(labels_root / split, f"Cityscapes {split} annotation")
        self.pairs: list[tuple[Path, Path]] = [self._pair(img, label_dir) for img in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))]
        if not self.pairs:
            raise DataError(f"no images matching <city>/*{IMAGE_SUFFIX} under {image_dir}")

    @staticmethod
    def _pair(image: Path, label_dir: Path) -> tuple[Path, Path]:
        """The labelIds file that belongs to `image`, or DataError naming the image."""
        stem = image.name[: -len(IMAGE_SUFFIX)]
        label = label_dir / image.parent.name / f"{stem}{LABEL_SUFFIX}"
        if not label.is_file():
            raise DataError(f"image {image} has no mask: {label} does not exist. Download gtFine for this split.")
        return image, label

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        img_path, label_path = self.pairs[index]
        image = read_rgb(img_path)
        label = label_ids_to_train_ids(read_label_png(label_path))
        check_pair(image, label, self.classes, str(label_path))
        return Sample(image, label, img_path.name[: -len(IMAGE_SUFFIX)])
