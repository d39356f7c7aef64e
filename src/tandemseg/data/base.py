"""The dataset contract every loader follows.

A dataset is indexable and returns a `Sample`: a uint8 HxWx3 RGB image, an int64 HxW label map with
values in [0, num_classes) or `classes.ignore_index`, and a name (file stem or frame id). Loaders
validate eagerly and raise `DataError` naming the file and the offending value; they never skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from tandemseg.data.classes import ClassTable
from tandemseg.errors import DataError


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) int64, class ids or ignore_index
    name: str


class SegDataset(Protocol):
    classes: ClassTable
    split: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, with a clear error if it cannot be decoded."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"cannot decode image {path}: {e}. Re-export it as PNG or JPEG.") from None


def read_label_png(path: Path) -> np.ndarray:
    """Read a single-channel label PNG as (H, W) int64."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"label file {path} has mode {im.mode}; expected a single-channel PNG of class indices")
            return np.asarray(im, dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"label file not found: {path}") from None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot decode label file {path}: {e}") from None


def check_pair(image: np.ndarray, label: np.ndarray, classes: ClassTable, where: str) -> None:
    """Raise DataError if sizes differ or a label value is outside the class table."""
    if image.shape[:2] != label.shape:
        raise DataError(f"{where}: image is {image.shape[1]}x{image.shape[0]} but its mask is {label.shape[1]}x{label.shape[0]} (WxH); they must match")
    bad = (label >= classes.num_classes) & (label != classes.ignore_index) | (label < 0)
    if bad.any():
        value = int(label[bad][0])
        raise DataError(
            f"{where}: label value {value} is outside the {classes.num_classes} classes "
            f"(valid: 0..{classes.num_classes - 1} or ignore {classes.ignore_index})"
        )


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder not found: {path}. Check the path in your dataset spec.")
    return path


class FirstFrames:
    """The first `n` frames of a dataset (quick runs: `--train-limit`)."""

    def __init__(self, dataset: SegDataset, n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))
        self.classes, self.split = dataset.classes, dataset.split

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]
