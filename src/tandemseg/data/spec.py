"""One string names a dataset everywhere (CLI and Python): `synthetic`, `camvid:PATH`,
`cityscapes:PATH`, `folder:PATH`; a split and a shift (`clean`, `fog:3`, `dusk`) complete it."""

from __future__ import annotations

from collections.abc import Callable

from tandemseg.data.base import SegDataset
from tandemseg.data.camvid import CamVid
from tandemseg.data.cityscapes import Cityscapes
from tandemseg.data.folder import FolderDataset
from tandemseg.data.shifts.spec import ShiftedDataset, parse_shift
from tandemseg.data.synthetic import SyntheticScenes
from tandemseg.errors import SpecError

# kind -> (constructor(path_or_None, split), needs a path)
DATASET_KINDS: dict[str, tuple[Callable[..., SegDataset], bool]] = {
    "synthetic": (lambda path, split: SyntheticScenes(split=split), False),
    "camvid": (lambda path, split: CamVid(path, split), True),
    "cityscapes": (lambda path, split: Cityscapes(path, split), True),
    "folder": (lambda path, split: FolderDataset(path, split), True),
}


def parse_dataspec(spec: str) -> tuple[str, str | None]:
    """Split `kind[:PATH]` and check it; returns (kind, path)."""
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in DATASET_KINDS:
        raise SpecError(f"unknown dataset kind {kind!r} in {spec!r}; valid: {', '.join(DATASET_KINDS)} (e.g. camvid:../shared/data/camvid)")
    _, needs_path = DATASET_KINDS[kind]
    if needs_path and not path:
        raise SpecError(f"dataset {kind!r} needs a path: write {kind}:PATH")
    if not needs_path and path:
        raise SpecError(f"dataset {kind!r} takes no path; write just {kind!r}")
    return kind, (path or None)


def open_dataset(spec: str, split: str = "val", shift: str = "clean", seed: int = 0) -> SegDataset:
    """Open a dataset split, optionally wrapped so each frame is shifted deterministically per (frame, seed)."""
    kind, path = parse_dataspec(spec)
    ctor, _ = DATASET_KINDS[kind]
    dataset = ctor(path, split)
    parsed = parse_shift(shift)
    return dataset if parsed is None else ShiftedDataset(dataset, parsed, seed=seed)
