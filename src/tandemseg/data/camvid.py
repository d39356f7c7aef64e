"""CamVid in the SegNet layout (`train.txt`, `train/`, `trainannot/`, ...), 11 classes, label 11 = void."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tandemseg.data.base import Sample, check_pair, read_label_png, read_rgb, require_dir
from tandemseg.data.classes import CAMVID, CAMVID_VOID, IGNORE_INDEX
from tandemseg.errors import DataError

SPLITS = ("train", "val", "test")


class CamVid:
    """CamVid split listed in `<root>/<split>.txt` as `image annotation` pairs relative to root."""

    classes = CAMVID

    def __init__(self, root: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise DataError(f"unknown CamVid split {split!r}; valid: {', '.join(SPLITS)}")
        self.root = require_dir(Path(root), "CamVid root")
        self.split = split
        listing = self.root / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"CamVid split list not found: {listing}. Expected the SegNet layout ({split}.txt, {split}/, {split}annot/).")
        self.pairs: list[tuple[Path, Path]] = []
        for lineno, line in enumerate(listing.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{listing}:{lineno}: expected 'image annotation', got {line!r}")
            img, ann = (self.root / p.lstrip("/").split("CamVid/")[-1] for p in parts)
            if not img.is_file():
                raise DataError(f"{listing}:{lineno}: image {img} does not exist")
            if not ann.is_file():
                raise DataError(f"{listing}:{lineno}: image {img.name} has no mask ({ann} does not exist)")
            self.pairs.append((img, ann))
        if not self.pairs:
            raise DataError(f"{listing} lists no images")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        img_path, ann_path = self.pairs[index]
        image = read_rgb(img_path)
        raw = read_label_png(ann_path)
        label = np.where(raw == CAMVID_VOID, IGNORE_INDEX, raw).astype(np.int64)
        check_pair(image, label, self.classes, str(ann_path))
        return Sample(image, label, img_path.stem)
