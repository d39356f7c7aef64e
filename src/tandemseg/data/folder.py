"""Any dataset as plain files: `images/`, `masks/<stem>.png` and `classes.json`.

Layout::

    root/classes.json        {"names": [...], "palette": [[r, g, b], ...], "ignore_index": 255}
    root/images/*.png|jpg    RGB images
    root/masks/<stem>.png    single-channel class indices (ignore_index for unlabelled pixels)

A split is chosen, in order, by `root/<split>.txt` (one image stem per line), by a subfolder
`root/images/<split>/` (masks in `root/masks/<split>/`), or, for split `all` or `train` only,
by taking every image directly in `root/images/`.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

from tandemseg.data.base import Sample, check_pair, read_label_png, read_rgb, require_dir
from tandemseg.data.classes import IGNORE_INDEX, ClassTable
from tandemseg.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
CLASSES_KEYS = ("names", "palette", "ignore_index")
FALLBACK_SPLITS = ("all", "train")


def distinct_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """`n` well-separated RGB colours (golden-ratio hue steps, alternating brightness), deterministic."""
    colours = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 == 0 else 0.7
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, value)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colours)


def _bad(path: Path, msg: str) -> DataError:
    return DataError(f"{path}: {msg}. Expected {{\"names\": [...], \"palette\": [[r, g, b], ...], \"ignore_index\": 255}}")


def _parse_names(path: Path, names: object) -> tuple[str, ...]:
    if not isinstance(names, list) or not names:
        raise _bad(path, "key 'names' must be a non-empty list of class names")
    if not all(isinstance(n, str) and n for n in names):
        raise _bad(path, "key 'names' must contain only non-empty strings")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise _bad(path, f"key 'names' lists {dup!r} twice; class names must be unique")
    return tuple(names)


def _parse_palette(path: Path, palette: object, n: int) -> tuple[tuple[int, int, int], ...]:
    if palette is None:
        return distinct_palette(n)
    if not isinstance(palette, list) or len(palette) != n:
        got = len(palette) if isinstance(palette, list) else type(palette).__name__
        raise _bad(path, f"key 'palette' must be a list of {n} [r, g, b] colours (one per name), got {got}")
    for i, c in enumerate(palette):
        ok = isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        if not ok:
            raise _bad(path, f"key 'palette' entry {i} is {c!r}; each colour must be [r, g, b] with integers 0..255")
    return tuple((c[0], c[1], c[2]) for c in palette)


def _parse_ignore(path: Path, ignore: object, n: int) -> int:
    if not isinstance(ignore, int) or isinstance(ignore, bool) or not 0 <= ignore <= 255:
        raise _bad(path, f"key 'ignore_index' must be an integer 0..255, got {ignore!r}")
    if ignore < n:
        raise _bad(path, f"key 'ignore_index' is {ignore}, which is a class id (0..{n - 1}); use a value >= {n}, e.g. 255")
    return ignore


def load_classes(path: Path) -> ClassTable:
    """Read and validate `classes.json`; every problem names the key that is wrong."""
    if not path.is_file():
        raise DataError(f"class list not found: {path}. Create it with {{\"names\": [\"background\", ...]}}.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise _bad(path, "must be a JSON object")
    unknown = sorted(set(data) - set(CLASSES_KEYS))
    if unknown:
        raise _bad(path, f"unknown key {unknown[0]!r} (allowed keys: {', '.join(CLASSES_KEYS)})")
    if "names" not in data:
        raise _bad(path, "missing key 'names'")
    names = _parse_names(path, data["names"])
    palette = _parse_palette(path, data.get("palette"), len(names))
    ignore = _parse_ignore(path, data.get("ignore_index", IGNORE_INDEX), len(names))
    return ClassTable(names, palette, ignore)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _find_image(images: Path, stem: str, listing: Path, lineno: int) -> Path:
    """The single image file for a stem listed in a split file."""
    if Path(stem).suffix.lower() in IMAGE_EXTS and (images / stem).is_file():
        return images / stem
    found = [images / f"{stem}{ext}" for ext in (*IMAGE_EXTS, *(e.upper() for e in IMAGE_EXTS))]
    found = [p for p in found if p.is_file()]
    if not found:
        raise DataError(f"{listing}:{lineno}: no image {stem}.png/.jpg/.jpeg in {images}")
    if len(found) > 1:
        raise DataError(f"{listing}:{lineno}: stem {stem!r} is ambiguous: {', '.join(p.name for p in found)}")
    return found[0]


class FolderDataset:
    """A user-supplied dataset laid out as `images/`, `masks/`, `classes.json` (see module docstring)."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root = require_dir(Path(root), "dataset")
        self.split = split
        self.classes = load_classes(self.root / "classes.json")
        images = require_dir(self.root / "images", "image")
        masks = require_dir(self.root / "masks", "mask")
        self.pairs = [self._with_mask(img, masks / img.parent.relative_to(images)) for img in self._split_images(images)]
        if not self.pairs:
            raise DataError(f"split {split!r} of {self.root} contains no images (.png, .jpg, .jpeg)")
        stems = [img.stem for img, _ in self.pairs]
        if len(set(stems)) != len(stems):
            dup = next(s for s in stems if stems.count(s) > 1)
            raise DataError(f"two images share the stem {dup!r} in {images}; each needs its own masks/{dup}.png, rename one")

    def _split_images(self, images: Path) -> list[Path]:
        listing = self.root / f"{self.split}.txt"
        if listing.is_file():
            lines = listing.read_text().splitlines()
            return [_find_image(images, s.strip(), listing, i) for i, s in enumerate(lines, 1) if s.strip()]
        if (images / self.split).is_dir():
            return _images_in(images / self.split)
        if self.split in FALLBACK_SPLITS:
            return _images_in(images)
        raise DataError(
            f"no split {self.split!r} in {self.root}: add {self.split}.txt listing image stems, or put its images in "
            f"images/{self.split}/ (masks in masks/{self.split}/), or use split 'all' for every image in images/"
        )

    @staticmethod
    def _with_mask(image: Path, mask_dir: Path) -> tuple[Path, Path]:
        mask = mask_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise DataError(f"image {image} has no mask: expected {mask}")
        return image, mask

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        img_path, mask_path = self.pairs[index]
        image = read_rgb(img_path)
        label = read_label_png(mask_path)
        check_pair(image, label, self.classes, str(mask_path))
        return Sample(image, label, img_path.stem)
