"""Shared fixtures: tiny on-disk datasets in each supported layout, and the real CamVid when present."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

# Property tests draw the same examples on every run and machine (the suite is deterministic); no example database.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")

H, W = 24, 32  # size of every fake frame (rows, columns)
REPO_ROOT = Path(__file__).resolve().parents[1]

# Cityscapes labelIds used in the fake masks, with the trainId each must become (255 = ignored).
CITYSCAPES_IDS = {0: 255, 1: 255, 4: 255, 7: 0, 8: 1, 9: 255, 11: 2, 17: 5, 21: 8, 23: 10, 24: 11, 26: 13, 29: 255, 31: 16, 33: 18}


def save_rgb(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """Write a random RGB image (PNG or JPEG by suffix) and return its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def save_mask(path: Path, values: np.ndarray) -> None:
    """Write a single-channel 8-bit PNG of class indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def cycling_mask(values: list[int] | np.ndarray, offset: int = 0, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """A mask that cycles through `values`, so every value occurs."""
    values = np.asarray(values)
    return values[(np.arange(size[0] * size[1]) + offset) % len(values)].reshape(size)


def make_camvid(root: Path, counts: dict[str, int] | None = None) -> Path:
    """SegNet-layout CamVid: `<split>.txt` of `image annotation` pairs, annotations 0..11 (11 = void)."""
    counts = counts or {"train": 3, "val": 2, "test": 1}
    for s, (split, count) in enumerate(counts.items()):
        lines = []
        for i in range(count):
            name = f"{split}_{i:03d}.png"
            save_rgb(root / split / name, seed=100 * s + i)
            save_mask(root / f"{split}annot" / name, cycling_mask(list(range(12)), offset=i))
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_cityscapes(root: Path) -> Path:
    """Cityscapes layout: train has aachen (2 frames) + bochum (1), val has frankfurt (1)."""
    frames = {"train": [("aachen", 0), ("aachen", 1), ("bochum", 0)], "val": [("frankfurt", 0)]}
    for split, items in frames.items():
        for k, (city, i) in enumerate(items):
            stem = f"{city}_{i:06d}_000019"
            save_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=k)
            save_mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", cycling_mask(list(CITYSCAPES_IDS), offset=k))
    return root


FOLDER_CLASSES = {"names": ["background", "person", "car"], "palette": [[0, 0, 0], [220, 20, 60], [0, 0, 142]], "ignore_index": 255}


def make_folder(root: Path) -> Path:
    """Folder layout: images a.png, b.png, c.jpg; masks with values 0..2 and 255; classes.json."""
    for i, name in enumerate(["a.png", "b.png", "c.jpg"]):
        save_rgb(root / "images" / name, seed=i)
        save_mask(root / "masks" / f"{Path(name).stem}.png", cycling_mask([0, 1, 2, 255], offset=i))
    (root / "classes.json").write_text(json.dumps(FOLDER_CLASSES))
    return root


@pytest.fixture(scope="session")
def fake() -> SimpleNamespace:
    """The helpers and constants above, for tests that build or corrupt files (no `import conftest`)."""
    return SimpleNamespace(
        H=H, W=W, CITYSCAPES_IDS=CITYSCAPES_IDS, FOLDER_CLASSES=FOLDER_CLASSES,
        save_rgb=save_rgb, save_mask=save_mask, cycling_mask=cycling_mask,
        make_camvid=make_camvid, make_cityscapes=make_cityscapes, make_folder=make_folder,
    )


@pytest.fixture
def tiny_camvid(tmp_path: Path) -> Path:
    """A CamVid SegNet layout with 3 train, 2 val, 1 test frames of 24x32."""
    return make_camvid(tmp_path / "camvid")


@pytest.fixture
def tiny_cityscapes(tmp_path: Path) -> Path:
    """A Cityscapes layout with 3 train and 1 val frames of 24x32."""
    return make_cityscapes(tmp_path / "cityscapes")


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A folder-layout dataset with 3 frames of 24x32 and 3 classes."""
    return make_folder(tmp_path / "folder")


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The real CamVid in `<repo>/../shared/data/camvid`; skips the test when it is not there."""
    root = REPO_ROOT.parent / "shared" / "data" / "camvid"
    if not (root / "train.txt").is_file():
        pytest.skip(f"real CamVid not found at {root}")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second torch thread only adds pool synchronisation, and the suite shares its cores.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
