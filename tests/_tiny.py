"""Tiny model configs and an in-process CLI runner shared by the model, checkpoint, ONNX, profile and train tests."""

from __future__ import annotations

import sys

import pytest

from tandemseg.cli import main

DEVICE_TINY = {
    "encoder": "mobilenetv2",
    "stages": [["stage1", 2, 8, 1, 2, 1], ["stage2", 2, 8, 1, 2, 1], ["stage3", 2, 16, 1, 2, 1], ["stage4", 2, 16, 1, 1, 2]],
    "head_channels": 16, "skip_channels": 8, "stem_channels": 8,
}
CLOUD_TINY = {
    "encoder": "resnet",
    "stages": [["layer1", 8, 1, 1, 1], ["layer2", 8, 1, 2, 1], ["layer3", 16, 1, 2, 1], ["layer4", 16, 1, 1, 2]],
    "stem_channels": 8, "aspp_channels": 16, "decoder_channels": 8, "skip_channels": 8, "aspp_rates": [1, 2, 3],
}
TINY = {"device": DEVICE_TINY, "cloud": CLOUD_TINY}


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """`tandemseg ARGS` through main() in this process (the console script's code path, no start-up cost).

    Returns (exit code, stdout, stderr).
    """
    monkeypatch.setattr(sys, "argv", ["tandemseg", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
