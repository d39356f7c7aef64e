"""`tandemseg data stats|preview` end to end, plus the library functions behind them.

One run goes through a real subprocess (exit code 2, a one-line stderr, no traceback); the rest call
`tandemseg.cli.main()` in-process with a patched argv: the same code path without paying the CLI's
start-up (it imports torch) again for every test.
Tests on the synthetic dataset and on shifts skip themselves while those modules are still stubs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _tiny import run_main
from PIL import Image

from tandemseg.data.camvid import CamVid
from tandemseg.data.classes import CAMVID
from tandemseg.data.stats import dataset_stats
from tandemseg.eval.preview import preview_grid, spread_indices

# `python -m tandemseg.cli` needs a cli/__main__.py; calling main() directly works either way.
CLI = [sys.executable, "-c", "from tandemseg.cli import main; main()"]


def run_subprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


def assert_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def require_synthetic() -> None:
    from tandemseg.data.synthetic import SyntheticScenes

    try:
        SyntheticScenes(split="val")
    except NotImplementedError:
        pytest.skip("tandemseg.data.synthetic is still a stub")


def require_shifts() -> None:
    from tandemseg.data.shifts.spec import parse_shift

    try:
        parse_shift("fog:3")
    except NotImplementedError:
        pytest.skip("tandemseg.data.shifts is still a stub")


# --- end to end through a subprocess -----------------------------------------------------------------


def test_unknown_kind_subprocess_one_line_exit_2() -> None:
    proc = run_subprocess("data", "stats", "kitti:/data/kitti")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown dataset kind 'kitti'")
    assert "camvid" in lines[0] and "synthetic" in lines[0]


# --- end to end in-process through main() ------------------------------------------------------------


def test_stats_writes_json(monkeypatch, capsys, tiny_camvid: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "stats.json"
    code, stdout, err = run_main(monkeypatch, capsys, "data", "stats", f"camvid:{tiny_camvid}", "--split", "train", "--json", str(out))
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert payload["frames"] == 3 and payload["split"] == "train"
    assert payload["image_sizes"] == {"24x32": 3}
    assert list(payload["class_frequency"]) == list(CAMVID.names)
    assert "Bicyclist" in stdout


def test_missing_path_exit_2(monkeypatch, capsys, tmp_path: Path) -> None:
    code, _, err = run_main(monkeypatch, capsys, "data", "stats", f"camvid:{tmp_path / 'nowhere'}", "--split", "train")
    assert code == 2
    assert err.strip().count("\n") == 0 and "nowhere" in err and "folder not found" in err


def test_kind_without_path_exit_2(monkeypatch, capsys) -> None:
    code, _, err = run_main(monkeypatch, capsys, "data", "preview", "camvid", "--out", "x.png")
    assert code == 2 and "camvid:PATH" in err


def test_usage_error_exit_2(monkeypatch, capsys) -> None:
    code, _, err = run_main(monkeypatch, capsys, "data", "stats", "camvid:/x", "--limit", "0")
    assert code == 2, err
    assert "Traceback" not in err
    code, _, err = run_main(monkeypatch, capsys, "data", "preview", "camvid:/x")
    assert code == 2 and "--out" in err


def test_stats_limit_and_table(monkeypatch, capsys, tiny_folder: Path, tmp_path: Path) -> None:
    from tandemseg.cli import common

    monkeypatch.setattr(common.out, "width", 200)  # long tmp paths would wrap the table at the default 80 columns
    out = tmp_path / "s.json"
    code, stdout, err = run_main(monkeypatch, capsys, "data", "stats", f"folder:{tiny_folder}", "--split", "all", "--limit", "2", "--json", str(out))
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert payload["frames"] == 2 and payload["ignored_fraction"] == pytest.approx(0.25)
    assert "person" in stdout and "frames: 2" in stdout  # the summary line; the title may wrap


def test_stats_bad_label_is_one_line_error(monkeypatch, capsys, tiny_folder: Path, fake) -> None:
    fake.save_mask(tiny_folder / "masks" / "b.png", np.full((fake.H, fake.W), 9))
    code, _, err = run_main(monkeypatch, capsys, "data", "stats", f"folder:{tiny_folder}", "--split", "all")
    assert code == 2 and "b.png: label value 9" in err.splitlines()[-1]


def test_preview_writes_png(monkeypatch, capsys, tiny_cityscapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid" / "preview.png"
    code, _, err = run_main(monkeypatch, capsys, "data", "preview", f"cityscapes:{tiny_cityscapes}", "--split", "train", "--n", "2", "--out", str(out))
    assert code == 0, err
    assert_png(out)


def test_preview_with_shift_adds_a_column(monkeypatch, capsys, tiny_camvid: Path, tmp_path: Path) -> None:
    require_shifts()
    plain, shifted = tmp_path / "plain.png", tmp_path / "shifted.png"
    args = ("data", "preview", f"camvid:{tiny_camvid}", "--split", "train", "--n", "1")
    assert run_main(monkeypatch, capsys, *args, "--out", str(plain))[0] == 0
    code, _, err = run_main(monkeypatch, capsys, *args, "--shift", "fog:3", "--seed", "1", "--out", str(shifted))
    assert code == 0, err
    assert assert_png(shifted)[0] > assert_png(plain)[0] * 1.3


def test_unknown_shift_exit_2(monkeypatch, capsys, tiny_camvid: Path, tmp_path: Path) -> None:
    require_shifts()
    code, _, err = run_main(monkeypatch, capsys, "data", "preview", f"camvid:{tiny_camvid}", "--split", "train", "--shift", "hail:9", "--out", str(tmp_path / "x.png"))
    assert code == 2 and "hail" in err and "Traceback" not in err


def test_synthetic_stats(monkeypatch, capsys, tmp_path: Path) -> None:
    require_synthetic()
    out = tmp_path / "syn.json"
    code, _, err = run_main(monkeypatch, capsys, "data", "stats", "synthetic", "--split", "val", "--limit", "2", "--json", str(out))
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert payload["frames"] == 2
    assert sum(payload["class_frequency"].values()) == pytest.approx(1.0)


def test_synthetic_preview_with_shift(monkeypatch, capsys, tmp_path: Path) -> None:
    require_synthetic()
    require_shifts()
    out = tmp_path / "syn.png"
    code, _, err = run_main(monkeypatch, capsys, "data", "preview", "synthetic", "--split", "val", "--shift", "fog:3", "--n", "1", "--out", str(out))
    assert code == 0, err
    assert_png(out)


# --- the library behind the commands --------------------------------------------------------------------


def test_dataset_stats_counts(tiny_camvid: Path) -> None:
    seen: list[int] = []

    def progress(items, total):
        seen.append(total)
        return items

    stats = dataset_stats(CamVid(tiny_camvid, "train"), progress=progress)
    assert seen == [3] and stats["frames"] == 3 and stats["image_sizes"] == {"24x32": 3}
    assert stats["ignored_fraction"] == pytest.approx(1 / 12)  # raw value 11 (void) is one in twelve
    assert all(f == pytest.approx(1 / 11) for f in stats["class_frequency"].values())
    assert stats["pixels"] == 3 * 24 * 32 and stats["classes"]["names"] == list(CAMVID.names)
    assert dataset_stats(CamVid(tiny_camvid, "train"), limit=10)["frames"] == 3
    with pytest.raises(ValueError, match="limit"):
        dataset_stats(CamVid(tiny_camvid, "train"), limit=0)


def test_preview_grid_library(tiny_camvid: Path, tmp_path: Path) -> None:
    ds = CamVid(tiny_camvid, "train")
    one = preview_grid(ds, None, 1, tmp_path / "one.png")
    two = preview_grid(ds, ds, 5, tmp_path / "a" / "two.png", shift_label="same")
    w1, h1 = assert_png(one)
    w2, h2 = assert_png(two)
    assert w2 > w1 and h2 > h1


def test_spread_indices() -> None:
    assert spread_indices(10, 1) == [0]
    assert spread_indices(10, 3) == [0, 4, 9] or spread_indices(10, 3) == [0, 5, 9]
    assert spread_indices(2, 5) == [0, 1]
    with pytest.raises(ValueError):
        spread_indices(10, 0)
