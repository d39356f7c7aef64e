"""Distribution shifts: every ImageNet-C corruption and lighting shift, specs, wrappers and streams."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from tandemseg.data.base import Sample
from tandemseg.data.classes import CAMVID
from tandemseg.data.shifts import (
    CORRUPTIONS,
    SEVERITY_FREE,
    SHIFT_FAMILIES,
    SHIFTS,
    STREAM_POOLS,
    Shift,
    ShiftedDataset,
    ShiftStream,
    StreamDataset,
    apply_shift,
    benchmark_shifts,
    parse_shift,
    stable_hash,
)
from tandemseg.data.shifts.registry import DETERMINISTIC
from tandemseg.errors import SpecError

ALL_CASES = [Shift(n, 0) if n in SEVERITY_FREE else Shift(n, s) for n in SHIFTS for s in ((0,) if n in SEVERITY_FREE else (1, 2, 3, 4, 5))]


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Gradients, a sinusoidal pattern, flat rectangles and fine noise: something every shift changes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 5.0) * np.cos(yy / 7.0)], axis=-1)
    for _ in range(6):
        r, c = rng.integers(0, h), rng.integers(0, w)
        x[r : r + h // 4, c : c + w // 4] = rng.random(3)
    x += rng.normal(0, 0.04, x.shape)
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return textured(96, 128)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference in grey levels."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


# ---------------------------------------------------------------- registry


def test_registry_has_the_15_imagenet_c_corruptions_and_two_lighting_shifts():
    assert len(CORRUPTIONS) == 15 and CORRUPTIONS[0] == "gaussian_noise" and CORRUPTIONS[-1] == "jpeg_compression"
    assert set(SHIFTS) == set(CORRUPTIONS) | {"dusk", "night"}
    grouped = [n for names in SHIFT_FAMILIES.values() for n in names]
    assert sorted(grouped) == sorted(SHIFTS)  # every shift in exactly one family
    assert set(SHIFT_FAMILIES) == {"noise", "blur", "weather", "digital", "lighting"}


# ---------------------------------------------------------------- every shift, every severity


@pytest.mark.parametrize("shift", ALL_CASES, ids=str)
def test_shift_output_is_valid_deterministic_and_changes_the_image(image, shift):
    out = apply_shift(image, shift, seed=0, index=3)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mad(out, image) > 2.0, f"{shift} barely changed the image"
    assert np.array_equal(out, apply_shift(image, shift, seed=0, index=3)), "same (seed, index) must repeat"
    other_seed = apply_shift(image, shift, seed=1, index=3)
    other_frame = apply_shift(image, shift, seed=0, index=4)
    if shift.name in DETERMINISTIC:
        assert np.array_equal(out, other_seed) and np.array_equal(out, other_frame)
    else:
        assert not np.array_equal(out, other_seed), "another seed must give other randomness"
        assert not np.array_equal(out, other_frame), "another frame index must give other randomness"
    assert image.flags.writeable and np.array_equal(image, textured(96, 128)), "the input must not be modified"


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shift_works_on_odd_small_frames(name):
    small = textured(37, 53, seed=2)
    shift = Shift(name, 0 if name in SEVERITY_FREE else 5)
    out = apply_shift(small, shift, seed=0, index=0)
    assert out.shape == small.shape and out.dtype == np.uint8


def test_every_shift_on_a_full_camvid_sized_frame():
    frame = textured(360, 480, seed=3)
    for name in SHIFTS:
        out = apply_shift(frame, Shift(name, 0 if name in SEVERITY_FREE else 3), seed=0, index=0)
        assert out.shape == (360, 480, 3) and out.dtype == np.uint8
        assert mad(out, frame) > 1.0, name


@pytest.mark.parametrize(
    "name", ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "contrast", "brightness", "snow"]
)
def test_damage_grows_with_severity(image, name):
    diffs = [mad(apply_shift(image, Shift(name, s), seed=0, index=0), image) for s in (1, 2, 3, 4, 5)]
    assert all(a < b for a, b in zip(diffs, diffs[1:], strict=False)), diffs


def test_fog_hides_more_of_the_scene_with_severity(image):
    # fog's haze is random per frame, so compare the mean over frames of how much of the scene survives
    def kept(severity: int) -> float:
        outs = [apply_shift(image, Shift("fog", severity), seed=0, index=i) for i in range(8)]
        return float(np.mean([np.corrcoef(o.ravel(), image.ravel())[0, 1] for o in outs]))

    assert kept(1) > kept(3) > kept(5)


def test_reference_parameters_spot_checks(image):
    from tandemseg.data.shifts import blur, digital, noise, weather

    assert noise.GAUSSIAN_NOISE == (0.08, 0.12, 0.18, 0.26, 0.38)
    assert noise.SHOT_NOISE == (60, 25, 12, 5, 3)
    assert blur.MOTION_BLUR[4] == (20, 15) and blur.DEFOCUS_BLUR[2] == (6, 0.5)
    assert weather.FOG[0] == (1.5, 2) and weather.FROST[4] == (0.6, 0.75)
    assert digital.JPEG_QUALITY == (25, 18, 15, 10, 7) and digital.CONTRAST == (0.4, 0.3, 0.2, 0.1, 0.05)
    # contrast is exactly the reference formula: (x - mean) * c + mean per channel
    x = image / 255.0
    expect = np.clip((x - x.mean(axis=(0, 1))) * 0.2 + x.mean(axis=(0, 1)), 0, 1) * 255
    assert np.abs(apply_shift(image, Shift("contrast", 3), 0, 0) - expect).max() <= 0.51


def test_lighting_shifts_darken_and_tint(image):
    dusk = apply_shift(image, Shift("dusk"), 0, 0).astype(np.float32)
    night = apply_shift(image, Shift("night"), 0, 0).astype(np.float32)
    assert night.mean() < dusk.mean() < image.mean()
    assert dusk[..., 0].mean() > dusk[..., 2].mean()  # orange cast: red above blue
    assert night[..., 2].mean() > night[..., 0].mean()  # blue cast


def test_bad_severity_is_rejected_by_the_functions(image):
    with pytest.raises(ValueError, match="1..5"):
        SHIFTS["fog"](image, 6, np.random.default_rng(0))


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "text, expected",
    [
        ("clean", None),
        ("", None),
        ("  CLEAN ", None),
        ("fog:3", Shift("fog", 3)),
        (" Gaussian_Noise : 5 ", Shift("gaussian_noise", 5)),
        ("dusk", Shift("dusk", 0)),
        ("night", Shift("night", 0)),
    ],
)
def test_parse_shift_accepts(text, expected):
    assert parse_shift(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("fgo:3", "gaussian_noise"),  # unknown name lists the valid ones
        ("fog:0", "1..5"),
        ("fog:6", "1..5"),
        ("fog:x", "1..5"),
        ("fog", "1..5"),
        ("dusk:2", "no severity"),
    ],
)
def test_parse_shift_rejects(text, message):
    with pytest.raises(SpecError, match=message):
        parse_shift(text)


def test_shift_text_round_trips():
    for shift in ALL_CASES:
        assert parse_shift(str(shift)) == shift
    assert str(Shift("fog", 3)) == "fog:3" and str(Shift("dusk", 0)) == "dusk"
    with pytest.raises(SpecError):
        Shift("fog", 9)
    with pytest.raises(SpecError):
        Shift("night", 2)


def test_seeding_is_stable_across_processes():
    """The per-frame generator must not depend on Python's per-process salted str hash."""
    assert stable_hash("fog") == zlib.crc32(b"fog")
    code = (
        "import hashlib, numpy as np\n"
        "from tandemseg.data.shifts import Shift, apply_shift\n"
        "frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)\n"
        "print(hashlib.sha256(apply_shift(frame, Shift('snow', 2), 7, 11).tobytes()).hexdigest())\n"
    )
    # this process has a random str-hash salt; the child gets a fixed, different one
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    here = hashlib.sha256(apply_shift(frame, Shift("snow", 2), 7, 11).tobytes()).hexdigest()
    assert child.stdout.strip() == here


# ---------------------------------------------------------------- dataset wrappers


class FakeSequence:
    """A tiny in-memory dataset: frame i is a textured image with a label map of class i % 11."""

    classes = CAMVID
    split = "val"

    def __init__(self, n: int = 6, size: tuple[int, int] = (24, 32)) -> None:
        self.samples = [
            Sample(textured(*size, seed=i), np.full(size, i % 11, dtype=np.int64), f"frame_{i:03d}") for i in range(n)
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def test_shifted_dataset_shifts_images_and_keeps_labels():
    base = FakeSequence()
    shifted = ShiftedDataset(base, Shift("fog", 3), seed=5)
    assert len(shifted) == len(base) and shifted.classes is base.classes and shifted.split == "val"
    for i in range(len(base)):
        got, orig = shifted[i], base[i]
        assert np.array_equal(got.label, orig.label) and got.name == orig.name
        assert got.image.shape == orig.image.shape and not np.array_equal(got.image, orig.image)
        assert np.array_equal(got.image, apply_shift(orig.image, Shift("fog", 3), seed=5, index=i))
    assert np.array_equal(shifted[-1].image, shifted[len(base) - 1].image)
    with pytest.raises(IndexError):
        shifted[len(base)]


# ---------------------------------------------------------------- streams


def test_mixed_stream_holds_each_condition_for_a_segment_and_cycles():
    stream = ShiftStream.from_spec("mixed", n_frames=500, segment=10, seed=0)
    pool = [parse_shift(c) for c in STREAM_POOLS["mixed"]]
    period = len(pool) * 10
    firsts = [stream.condition_at(k * 10) for k in range(len(pool))]
    assert sorted(map(str, firsts)) == sorted(map(str, pool))  # every condition once per cycle
    for i in range(2 * period):
        assert stream.condition_at(i) == firsts[(i // 10) % len(pool)]
    assert [stream.condition_at(i) for i in range(period)] == [
        ShiftStream.from_spec("stream:mixed/10", seed=0).condition_at(i) for i in range(period)
    ]
    other = ShiftStream.from_spec("mixed", segment=10, seed=1)
    assert [other.condition_at(k * 10) for k in range(len(pool))] != firsts
    runs = stream.segments(35)
    assert [(a, b) for a, b, _ in runs] == [(0, 10), (10, 20), (20, 30), (30, 35)]


def test_explicit_stream_follows_its_schedule():
    stream = ShiftStream.from_spec("fog:3@0-99,dusk@100-199,night@250-")
    assert stream.condition_at(0) == Shift("fog", 3) and stream.condition_at(99) == Shift("fog", 3)
    assert stream.condition_at(100) == Shift("dusk") and stream.condition_at(199) == Shift("dusk")
    assert stream.condition_at(200) is None and stream.condition_at(249) is None
    assert stream.condition_at(10_000) == Shift("night")
    assert parse_shift(str(stream)).schedule == stream.schedule  # text round trip


def test_parse_shift_names_a_stream_and_the_wrapper_seeds_it():
    parsed = parse_shift("stream:weather/5")
    assert isinstance(parsed, ShiftStream) and parsed.seed is None
    assert str(parsed) == "stream:weather/5"
    wrapped = ShiftedDataset(FakeSequence(n=20), parsed, seed=3)
    expect = ShiftStream.from_spec("weather/5", seed=3)
    assert [wrapped.condition_at(i) for i in range(20)] == [expect.condition_at(i) for i in range(20)]


def test_stream_dataset_applies_the_scheduled_condition_per_frame():
    base = FakeSequence(n=6)
    stream = ShiftStream.from_spec("stream:gaussian_noise:2@0-1,clean@2-3,dusk@4-", seed=0)
    data = StreamDataset(base, stream, seed=9)
    for i in range(6):
        got = data[i]
        assert np.array_equal(got.label, base[i].label) and got.name == base[i].name
        assert np.array_equal(got.image, apply_shift(base[i].image, stream.condition_at(i), seed=9, index=i))
    assert np.array_equal(data[2].image, base[2].image)  # clean frames pass through
    assert not np.array_equal(data[0].image, base[0].image)
    assert np.array_equal(data[5].image, StreamDataset(base, stream, seed=9)[5].image)


@pytest.mark.parametrize(
    "text",
    [
        "stream:",
        "stream:nosuchpool",
        "stream:mixed/0",
        "stream:mixed/x",
        "stream:fog:3@0-10,dusk@5-20",  # overlap
        "stream:fog:3@10-5",  # inverted
        "stream:fog:3@",  # no range
        "stream:fog:3@0-9,dusk",  # a range is missing
        "stream:fgo:3@0-9",  # unknown condition
        "stream:fog:9@0-9",  # bad severity
        "stream:night@0-,fog:3@10-20",  # open-ended segment followed by another
    ],
)
def test_invalid_streams_raise_spec_error(text):
    with pytest.raises(SpecError):
        parse_shift(text)


def test_stream_argument_checks():
    with pytest.raises(SpecError, match="segment"):
        ShiftStream.from_spec("mixed/20", segment=10)
    with pytest.raises(SpecError, match="after the last frame"):
        ShiftStream.from_spec("fog:3@300-", n_frames=100)


# ---------------------------------------------------------------- benchmark


def test_benchmark_reports_every_shift():
    timings = benchmark_shifts(size=(32, 40), repeats=1)
    assert set(timings) == set(SHIFTS) and all(v > 0 for v in timings.values())
