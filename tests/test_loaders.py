"""Dataset loaders on tiny fake layouts (shapes, dtypes, label mapping, every error) and on the real CamVid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tandemseg.data.camvid import CamVid
from tandemseg.data.cityscapes import Cityscapes, label_ids_to_train_ids
from tandemseg.data.classes import CAMVID, CITYSCAPES, IGNORE_INDEX
from tandemseg.data.folder import FolderDataset, distinct_palette
from tandemseg.data.spec import DATASET_KINDS, parse_dataspec
from tandemseg.errors import DataError, SpecError


def assert_valid_sample(sample, classes) -> None:
    assert sample.image.dtype == np.uint8 and sample.image.ndim == 3 and sample.image.shape[2] == 3
    assert sample.label.dtype == np.int64 and sample.label.shape == sample.image.shape[:2]
    ok = (sample.label >= 0) & (sample.label < classes.num_classes) | (sample.label == classes.ignore_index)
    assert ok.all()


# --- CamVid -----------------------------------------------------------------------------------------


def test_camvid_tiny_splits_shapes_and_void(tiny_camvid: Path, fake: SimpleNamespace) -> None:
    assert [len(CamVid(tiny_camvid, s)) for s in ("train", "val", "test")] == [3, 2, 1]
    ds = CamVid(tiny_camvid, "train")
    sample = ds[0]
    assert ds.classes is CAMVID and sample.name == "train_000"
    assert sample.image.shape == (fake.H, fake.W, 3)
    assert_valid_sample(sample, CAMVID)
    raw = fake.cycling_mask(list(range(12)))
    assert (sample.label[raw == 11] == IGNORE_INDEX).all()
    assert np.array_equal(sample.label[raw != 11], raw[raw != 11])


def test_camvid_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        CamVid(tmp_path / "nowhere", "train")


def test_camvid_unknown_split(tiny_camvid: Path) -> None:
    with pytest.raises(DataError, match="valid: train, val, test"):
        CamVid(tiny_camvid, "holdout")


def test_camvid_image_without_mask(tiny_camvid: Path) -> None:
    (tiny_camvid / "trainannot" / "train_001.png").unlink()
    with pytest.raises(DataError, match="train_001.png"):
        CamVid(tiny_camvid, "train")


def test_camvid_mismatched_size(tiny_camvid: Path, fake: SimpleNamespace) -> None:
    fake.save_mask(tiny_camvid / "trainannot" / "train_000.png", np.zeros((fake.H, fake.W + 1)))
    with pytest.raises(DataError, match=r"train_000\.png.*must match"):
        CamVid(tiny_camvid, "train")[0]


def test_camvid_label_out_of_range(tiny_camvid: Path, fake: SimpleNamespace) -> None:
    fake.save_mask(tiny_camvid / "trainannot" / "train_002.png", np.full((fake.H, fake.W), 12))
    ds = CamVid(tiny_camvid, "train")
    with pytest.raises(DataError, match=r"train_002\.png: label value 12"):
        ds[2]


# --- Cityscapes -------------------------------------------------------------------------------------


def test_cityscapes_tiny_maps_label_ids_to_train_ids(tiny_cityscapes: Path, fake: SimpleNamespace) -> None:
    ds = Cityscapes(tiny_cityscapes, "train")
    assert len(ds) == 3 and len(Cityscapes(tiny_cityscapes, "val")) == 1
    assert ds.classes is CITYSCAPES
    sample = ds[0]
    assert sample.name == "aachen_000000_000019" and sample.image.shape == (fake.H, fake.W, 3)
    assert_valid_sample(sample, CITYSCAPES)
    raw = fake.cycling_mask(list(fake.CITYSCAPES_IDS))
    for label_id, train_id in fake.CITYSCAPES_IDS.items():
        assert (sample.label[raw == label_id] == train_id).all(), f"labelId {label_id} should become {train_id}"


def test_cityscapes_table_is_the_standard_one() -> None:
    raw = np.arange(-1, 300)
    train = label_ids_to_train_ids(raw)
    mapped = {int(i): int(t) for i, t in zip(raw, train, strict=True) if t != IGNORE_INDEX}
    assert mapped == {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                      26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    assert train.dtype == np.int64


def test_cityscapes_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        Cityscapes(tmp_path / "nowhere", "train")


def test_cityscapes_missing_gtfine(tiny_cityscapes: Path) -> None:
    shutil.rmtree(tiny_cityscapes / "gtFine")
    with pytest.raises(DataError, match="gtFine"):
        Cityscapes(tiny_cityscapes, "train")


def test_cityscapes_unknown_split_lists_present_ones(tiny_cityscapes: Path) -> None:
    with pytest.raises(DataError, match="splits present: train, val"):
        Cityscapes(tiny_cityscapes, "test")


def test_cityscapes_image_without_mask(tiny_cityscapes: Path) -> None:
    (tiny_cityscapes / "gtFine/train/bochum/bochum_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="bochum_000000_000019_leftImg8bit.png"):
        Cityscapes(tiny_cityscapes, "train")


def test_cityscapes_mismatched_size(tiny_cityscapes: Path, fake: SimpleNamespace) -> None:
    fake.save_mask(tiny_cityscapes / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png", np.full((fake.H // 2, fake.W), 7))
    with pytest.raises(DataError, match="frankfurt_000000_000019_gtFine_labelIds.png.*must match"):
        Cityscapes(tiny_cityscapes, "val")[0]


# --- Folder -----------------------------------------------------------------------------------------


def test_folder_tiny_all(tiny_folder: Path, fake: SimpleNamespace) -> None:
    ds = FolderDataset(tiny_folder, "all")
    assert len(ds) == 3 and len(FolderDataset(tiny_folder, "train")) == 3
    assert ds.classes.names == tuple(fake.FOLDER_CLASSES["names"]) and ds.classes.palette[2] == (0, 0, 142)
    for i, name in enumerate(["a", "b", "c"]):
        sample = ds[i]
        assert sample.name == name and sample.image.shape == (fake.H, fake.W, 3)
        assert_valid_sample(sample, ds.classes)
        assert np.array_equal(sample.label, fake.cycling_mask([0, 1, 2, 255], offset=i))


def test_folder_split_file(tiny_folder: Path) -> None:
    (tiny_folder / "val.txt").write_text("c\n\nb.png\n")
    assert [s.name for s in FolderDataset(tiny_folder, "val")] == ["c", "b"]


def test_folder_split_file_unknown_stem(tiny_folder: Path) -> None:
    (tiny_folder / "val.txt").write_text("a\nzzz\n")
    with pytest.raises(DataError, match=r"val\.txt:2: no image zzz"):
        FolderDataset(tiny_folder, "val")


def test_folder_split_subfolder(tiny_folder: Path, fake: SimpleNamespace) -> None:
    fake.save_rgb(tiny_folder / "images/val/v1.png", seed=7)
    fake.save_mask(tiny_folder / "masks/val/v1.png", np.ones((fake.H, fake.W)))
    ds = FolderDataset(tiny_folder, "val")
    assert len(ds) == 1 and ds[0].name == "v1" and (ds[0].label == 1).all()


def test_folder_unknown_split_explains_options(tiny_folder: Path) -> None:
    with pytest.raises(DataError, match=r"val\.txt.*images/val/.*'all'"):
        FolderDataset(tiny_folder, "val")


def test_folder_palette_optional(tiny_folder: Path) -> None:
    (tiny_folder / "classes.json").write_text(json.dumps({"names": ["x", "y", "z"]}))
    classes = FolderDataset(tiny_folder, "all").classes
    assert classes.palette == distinct_palette(3) and classes.ignore_index == IGNORE_INDEX
    assert len(set(distinct_palette(40))) == 40


def test_folder_missing_folder(tmp_path: Path, tiny_folder: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        FolderDataset(tmp_path / "nowhere", "all")
    shutil.rmtree(tiny_folder / "masks")
    with pytest.raises(DataError, match="mask folder not found"):
        FolderDataset(tiny_folder, "all")


def test_folder_image_without_mask(tiny_folder: Path) -> None:
    (tiny_folder / "masks" / "c.png").unlink()
    with pytest.raises(DataError, match=r"c\.jpg has no mask"):
        FolderDataset(tiny_folder, "all")


def test_folder_mismatched_size(tiny_folder: Path, fake: SimpleNamespace) -> None:
    fake.save_mask(tiny_folder / "masks/b.png", np.zeros((fake.H + 2, fake.W)))
    with pytest.raises(DataError, match=r"b\.png: image is 32x24 but its mask is 32x26"):
        FolderDataset(tiny_folder, "all")[1]


def test_folder_label_out_of_range(tiny_folder: Path, fake: SimpleNamespace) -> None:
    mask = np.zeros((fake.H, fake.W))
    mask[3, 4] = 7
    fake.save_mask(tiny_folder / "masks/a.png", mask)
    with pytest.raises(DataError, match=r"a\.png: label value 7 is outside the 3 classes"):
        FolderDataset(tiny_folder, "all")[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "must be a JSON object"),
        ('{"palette": []}', "missing key 'names'"),
        ('{"names": []}', "key 'names' must be a non-empty list"),
        ('{"names": ["a", "a"]}', "key 'names' lists 'a' twice"),
        ('{"names": ["a", "b"], "palette": [[0, 0, 0]]}', "key 'palette' must be a list of 2"),
        ('{"names": ["a"], "palette": [[0, 0, 300]]}', "key 'palette' entry 0"),
        ('{"names": ["a", "b"], "ignore_index": 1}', "key 'ignore_index' is 1, which is a class id"),
        ('{"names": ["a"], "ignore_index": "255"}', "key 'ignore_index' must be an integer"),
        ('{"names": ["a"], "pallete": [[0, 0, 0]]}', "unknown key 'pallete'"),
    ],
)
def test_folder_bad_classes_json(tiny_folder: Path, content: str, message: str) -> None:
    (tiny_folder / "classes.json").write_text(content)
    with pytest.raises(DataError, match=message):
        FolderDataset(tiny_folder, "all")


def test_folder_missing_classes_json(tiny_folder: Path) -> None:
    (tiny_folder / "classes.json").unlink()
    with pytest.raises(DataError, match="classes.json"):
        FolderDataset(tiny_folder, "all")


# --- dataset specs ----------------------------------------------------------------------------------


def test_parse_dataspec() -> None:
    assert parse_dataspec("camvid:/data/camvid") == ("camvid", "/data/camvid")
    assert parse_dataspec("synthetic") == ("synthetic", None)


def test_parse_dataspec_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(SpecError) as err:
        parse_dataspec("kitti:/data")
    assert "'kitti'" in str(err.value)
    assert all(kind in str(err.value) for kind in DATASET_KINDS)


def test_parse_dataspec_path_rules() -> None:
    with pytest.raises(SpecError, match="camvid:PATH"):
        parse_dataspec("camvid")
    with pytest.raises(SpecError, match="takes no path"):
        parse_dataspec("synthetic:/tmp")


# --- real CamVid ------------------------------------------------------------------------------------


def test_real_camvid(camvid_root: Path) -> None:
    train, val = CamVid(camvid_root, "train"), CamVid(camvid_root, "val")
    assert (len(train), len(val)) == (367, 101)
    for ds in (train, val):
        sample = ds[0]
        assert sample.image.shape == (360, 480, 3)
        assert_valid_sample(sample, CAMVID)
        assert (sample.label == IGNORE_INDEX).mean() < 0.5
