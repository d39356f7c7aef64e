"""`tandemseg report`: the results tables from small hand-written JSON, cell by cell, and through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _tiny import run_main

from tandemseg.eval import report


def write(folder: Path, name: str, obj: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(obj))


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every table row in `markdown` (separator rows left out)."""
    rows = []
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


# ----------------------------------------------------------------------------- accuracy


def test_models_table_rows_follow_the_shift_order_and_skip_missing_ones(tmp_path) -> None:
    write(tmp_path, "device-clean.json", {"miou": 0.5})
    write(tmp_path, "cloud-clean.json", {"miou": 0.625})
    write(tmp_path, "device-fog3.json", {"miou": 0.2})
    write(tmp_path, "cloud-fog3.json", {"miou": 0.45})
    write(tmp_path, "device-dusk.json", {"miou": 0.3})  # its cloud half is missing: no row
    rows = table_rows(report.models_table(tmp_path))
    assert rows == [["shift", "device mIoU", "cloud mIoU", "cloud - device (pp)"],
                    ["clean", "50.0", "62.5", "+12.5"], ["fog:3", "20.0", "45.0", "+25.0"]]


# ----------------------------------------------------------------------------- offloading


def sweep(shift: str, rows: list[dict]) -> dict:
    return {"shift": shift, "rates": [0.1, 0.2], "device_miou": 0.4, "cloud_miou": 0.6, "device_ms": 12.34, "cloud_ms": 150.0,
            "device_gflops": 1.5, "cloud_gflops": 20.0, "threads": 1, "rows": rows}


def row(policy: str, rate: float, collab: float, upload: float, gain: float | None) -> dict:
    return {"policy": policy, "target_rate": rate, "collab_miou": collab, "upload_rate": upload, "gain_captured": gain, "score_ms": 0.25}


def test_offloading_tables_cells_and_order(tmp_path) -> None:
    write(tmp_path, "sweep-fog-3.json", sweep("fog:3", [row("acdc", 0.1, 0.45, 0.09, 0.5), row("acdc", 0.2, 0.5, 0.21, None),
                                                        row("acdc:lam0.9", 0.1, 0.44, 0.1, 0.4)]))
    write(tmp_path, "sweep-clean.json", sweep("clean", [row("acdc", 0.1, 0.41, 0.1, 0.1234), row("acdc:lam0.9", 0.1, 0.4, 0.1, 0.3)]))
    write(tmp_path, "sweep-other.json", sweep("night", []))  # not a condition of the tables: left out
    text = report.offloading_tables(tmp_path)
    tables = [t for t in text.split("**") if t.strip().startswith("|")]
    collab, vs_random, gain, ablation = (table_rows(t) for t in tables)
    assert vs_random[3] == ["acdc", "-", "-", "-", "-"]  # no paired difference in this JSON: '-', and random has no row
    assert collab[0] == ["policy", "clean 10%", "clean 20%", "fog:3 10%", "fog:3 20%"]
    assert collab[1] == ["device only", "40.0", "40.0", "40.0", "40.0"] and collab[2][0] == "cloud only"
    assert collab[3] == ["acdc", "41.0 (10%)", "-", "45.0 (9%)", "50.0 (21%)"]
    assert gain[3] == ["acdc", "12%", "-", "50%", "-"]  # no gain figure: '-'
    assert ablation[3:] == [["acdc", "12%", "-", "50%", "-"], ["acdc:lam0.9", "30%", "-", "40%", "-"]]  # variants of the first shift
    assert "hindsight" not in text  # no hindsight files, no section
    assert "Cost per frame: device 12.3 ms / 1.50 GFLOPs, cloud 150 ms / 20.0 GFLOPs (1 thread)" in text
    assert "acdc 0.25" in text and "acdc:lam0.9 0.25" not in text  # scoring cost of the plain policies only


def test_offloading_intervals_auc_and_paired_differences(tmp_path) -> None:
    """Fields of the bootstrap (issue 9): intervals next to each figure, AUC per policy, paired difference to random."""
    acdc = {**row("acdc", 0.1, 0.45, 0.1, 0.5), "collab_miou_ci": [0.43, 0.47], "gain_captured_ci": [0.3, 0.7],
            "vs": {"random": {"collab_miou_delta": 0.021, "ci": [-0.004, 0.05]}}}
    data = {**sweep("fog:3", [acdc, row("random", 0.1, 0.43, 0.1, 0.2)]), "device_miou_ci": [0.38, 0.42],
            "bootstrap": {"frames": 303},
            "auc": {"policies": {"acdc": {"auc": 0.47, "auc_ci": [0.45, 0.49], "vs": {"random": {"auc_delta": 0.01, "ci": [0.0, 0.02]}}}}}}
    write(tmp_path, "sweep-fog-3.json", data)
    text = report.offloading_tables(tmp_path)
    assert "45.0 [43.0, 47.0] (10%)" in text and "50% [30, 70]" in text and "40.0 [38.0, 42.0]" in text
    assert "+2.1 [-0.4, +5.0]" in text
    assert "| acdc | 47.0 [45.0, 49.0]; +1.0 [+0.0, +2.0] vs random |" in text
    assert "Streams: fog:3 303 frames." in text


def test_offloading_single_runs_are_listed(tmp_path) -> None:
    run = {"policy": "acdc", "shift": "clean", "codec": "png", "collab_miou": 0.5, "device_miou": 0.4, "cloud_miou": 0.6,
           "oracle_miou": 0.55, "gain_captured": 2 / 3, "upload_rate": 0.1, "target_rate": 0.1, "bytes_up_per_frame": 2500.0,
           "bytes_up_per_upload": 25000.0, "device_ms": 10.0, "score_ms": 0.5, "score_overhead": 0.05}
    write(tmp_path, "run-acdc-clean.json", run)
    text = report.offloading_tables(tmp_path)
    assert text.startswith("- `run-acdc-clean.json`: acdc on clean, codec png: collab 50.0 (device 40.0, cloud 60.0, greedy oracle 55.0), "
                           "gain captured 67%, upload rate 10.0% (target 10.0%), 2.5 kB up/frame (25 kB per upload)")


# ----------------------------------------------------------------------------- service


def device_run(collab: float, updates: int = 0) -> dict:
    return {"upload_rate": 0.1, "device_miou": 0.25, "collab_miou": collab, "u_updates_applied": updates, "fallbacks": 0}


def test_service_dcam_rows_and_missing_parts(tmp_path) -> None:
    write(tmp_path, "device-acdc-r0.1-no-dcam.json", device_run(0.27))
    write(tmp_path, "device-acdc-r0.1-dcam.json", device_run(0.2746, updates=8))
    write(tmp_path, "collab-acdc-r0.1-dcam.json", {"collab_miou": 0.2746})
    write(tmp_path, "device-acdc-r0.2-dcam.json", device_run(0.3))  # no baseline: no row
    text = report.service_tables(tmp_path)
    rows = table_rows(text)
    assert rows[1] == ["10%", "10.00% / 10.00%", "25.00", "27.00", "27.46", "+0.46", "8", "0 / 0", "- / 27.46"]
    assert len(rows) == 2 and "Serving efficiency" not in text and "Payload" not in text


def test_service_serving_and_payload_sections(tmp_path) -> None:
    peak = {"devices": 8, "throughput_fps": 8.0, "latency_ms_p50": 800.0, "latency_ms_p95": 1000.0, "latency_ms_p99": 1200.0, "errors": 0,
            "raw_fps": 5.0, "efficiency_vs_raw": 1.6, "cpu_efficiency_vs_raw": None,
            "raw_batched": {"batch": 4, "threads": 1, "fps": [5.0, 5.1]},
            "rounds": [{"throughput_fps": 8.0, "raw_fps": 5.0, "efficiency_vs_raw": 1.6}]}
    half = {**peak, "throughput_fps": 4.0, "latency_ms_p50": 200.0, "latency_ms_p99": 300.0, "errors": None}
    payload = {"uncompressed_bytes": 518400.0, "frame": [360, 480, 3], "codecs": {"png": {"bytes_mean": 259200.0, "ratio": 2.0}},
               "device_probs_bytes_mean": 9000.0, "device_probs_uncompressed": 23760, "device_probs_shape": [11, 45, 48],
               "label_png_bytes_mean": 4000.0, "u_float32_bytes": 484}
    write(tmp_path, "loadtest-peak.json", peak)
    write(tmp_path, "loadtest-half.json", half)
    write(tmp_path, "payload-bytes.json", payload)
    text = report.service_tables(tmp_path)
    rows = table_rows(text)
    assert ["raw batched forward (batch 4, 1 threads; each measurement: 5.000, 5.100)", "5.000", "-", "-", "-", "-"] in rows
    assert ["service, open loop at half of peak, 8 devices", "4.000", "200", "1000", "300", "0"] in rows
    assert "service / ideal two-core raw (2 x the 1-thread raw forward) = 0.800 (8.000 fps / 10.000)" in text
    assert "p99 / p50 at half of peak = 1.50" in text and "CPU seconds" not in text
    assert ["png", "259200", "2.0x"] in rows and "U: 484 bytes" in text


def test_committed_tables_are_what_the_report_builds() -> None:
    """The committed tables came from these functions: rebuilding them from the committed JSON changes nothing."""
    root = Path(__file__).resolve().parents[1] / "docs" / "results"
    pairs = [(report.models_table, root / "models" / "synthetic", "table.md"),
             (report.models_table, root / "models" / "camvid", "table.md"),
             (report.offloading_tables, root / "offloading" / "camvid", "tables.md"),
             (report.service_tables, root / "service", "tables.md")]
    present = [(build, folder, name) for build, folder, name in pairs if (folder / name).is_file()]
    if not present:
        pytest.skip("no results tables are committed")
    for build, folder, name in present:
        assert build(folder) == (folder / name).read_text(), folder


# ----------------------------------------------------------------------------- the CLI


def test_report_cli_writes_prints_and_reads_one_field(tmp_path, monkeypatch, capsys) -> None:
    write(tmp_path, "device-clean.json", {"miou": 0.5})
    write(tmp_path, "cloud-clean.json", {"miou": 0.75})
    code, out, _ = run_main(monkeypatch, capsys, "report", "models", str(tmp_path))
    assert code == 0 and "| clean | 50.0 | 75.0 | +25.0 |" in out
    assert (tmp_path / "table.md").read_text() == out
    write(tmp_path, "peak.json", {"throughput_fps": 8.5, "rounds": [{"raw_fps": 3.0}], "name": "x"})
    assert run_main(monkeypatch, capsys, "report", "field", str(tmp_path / "peak.json"), "throughput_fps", "--times", "0.5")[1] == "4.25\n"
    assert run_main(monkeypatch, capsys, "report", "field", str(tmp_path / "peak.json"), "rounds.0.raw_fps")[1] == "3.0\n"
    code, _, err = run_main(monkeypatch, capsys, "report", "field", str(tmp_path / "peak.json"), "rounds.1.raw_fps")
    assert code == 2 and "stopped at '1'" in err
    code, _, err = run_main(monkeypatch, capsys, "report", "field", str(tmp_path / "peak.json"), "name", "--times", "2")
    assert code == 2 and "not a number" in err
    code, _, err = run_main(monkeypatch, capsys, "report", "service", str(tmp_path / "missing"))
    assert code == 2 and "not a folder" in err


def test_codec_tables_check_the_jd_target_both_ways(tmp_path) -> None:
    def point(method, setting, nbytes, miou, **kw):
        return {"method": method, "setting": setting, "bytes_per_frame": nbytes, "bpp": nbytes * 8 / 1000, "miou": miou, **kw}

    points = [point("no-compression", "float32 features", 90000, 0.50, cloud_parameters=300_000, cloud_gflops=0.5),
              point("jd", "lambda=1, K=3", 400, 0.495, cloud_parameters=100_000, cloud_gflops=0.2),  # 0.5 pp, 400 <= 2500 / 5
              point("jd", "lambda=0.1, K=3", 200, 0.45),  # 5 pp below: not met
              point("sd+d", "lambda=1, K=1", 420, 0.48, cloud_parameters=1_000_000, cloud_gflops=0.9),
              point("jpeg", "jpeg:10", 2500, 0.50), point("png", "png", 290000, 0.55)]
    write(tmp_path, "rd.json", {"data": "d", "split": "val", "frames": 3, "bpp": "bits / pixels", "points": points,
                                "references": {"cloud_original_miou": 0.55, "device_miou": 0.4, "cloud_parameters": 6_000_000, "cloud_gflops": 12.0}})
    text = report.codec_tables(tmp_path)
    met = [line for line in text.splitlines() if "target met" in line]
    assert len(met) == 1 and "lambda=1, K=3" in met[0] and "jpeg:10 2500 B (JD uses 16.0% of it)" in met[0]
    assert "JD has 10.0% of SD+D's cloud-side parameters" in text
    assert "| cloud segmenter (on the decoded image) | 6.000 | 12.00 |" in text


def test_exits_tables_show_the_savings_against_the_final_exit(tmp_path) -> None:
    config = {"setting": "input_dependent", "exits": ["s2-a"], "thresholds": [0.9], "pixel_thresholds": [0.8]}
    write(tmp_path, "search-drop0.01.json", {"best": {"config": config, "miou": 0.595, "costs": {"gflops": 0.6, "latency_ms": 20.0}},
                                             "reference": {"miou": 0.60, "costs": {"gflops": 1.2, "latency_ms": 40.0}}})
    write(tmp_path, "eval-drop0.01-clean.json", {"miou": 0.59, "final_exit_miou": 0.60, "gflops_per_frame": 0.5, "final_gflops_per_frame": 1.25,
                                                 "latency_ms": 20.0, "final_latency_ms": 50.0, "exit_histogram": {"s2-a": 60, "final": 41}})
    text = report.exits_tables(tmp_path)
    assert "| drop0.01 | input_dependent | s2-a (th 0.9, pix 0.8) | 59.5 | -0.50 | 0.600 / 1.200 | 20.0 / 40.0 |" in text
    assert "| drop0.01-clean | 59.0 | 60.0 | -1.00 | 0.500 / 1.250 (2.50x) | 20.0 / 50.0 (2.50x) | s2-a: 60, final: 41 |" in text
