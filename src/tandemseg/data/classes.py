"""Class tables (names, palettes, ignore index) that travel with each dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255  # the ignore value every loader maps void/unlabelled pixels to


@dataclass(frozen=True)
class ClassTable:
    """Names and RGB palette of a label space; label values are 0..len(names)-1, plus IGNORE_INDEX."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if len(self.names) != len(self.palette):
            raise ValueError(f"{len(self.names)} class names but {len(self.palette)} palette colours")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """Map an HxW label map to an HxWx3 uint8 picture; ignored pixels are black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        return lut[np.clip(label, 0, 255).astype(np.uint8)]

    def to_json(self) -> dict:
        return {"names": list(self.names), "palette": [list(c) for c in self.palette], "ignore_index": self.ignore_index}

    @classmethod
    def from_json(cls, d: dict) -> ClassTable:
        return cls(tuple(d["names"]), tuple(tuple(int(v) for v in c) for c in d["palette"]), int(d.get("ignore_index", IGNORE_INDEX)))


# CamVid, 11 classes (SegNet version); raw label 11 is void and becomes IGNORE_INDEX.
CAMVID = ClassTable(
    names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"),
    palette=(
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ),
)
CAMVID_VOID = 11

# Cityscapes, the 19 evaluation trainIds.
CITYSCAPES = ClassTable(
    names=(
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
        "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    ),
    palette=(
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ),
)
