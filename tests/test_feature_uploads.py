"""JD feature uploads end to end: the device runtime range-codes its split features (FeaturePayload), the
request crosses real HTTP to a uvicorn server on 127.0.0.1, and the cloud's joint decoder segments straight from
the bitstream. A foreign, truncated or misdirected bitstream gets a clear 4xx, and a server without a codec says
how to start one; the in-process and HTTP paths give the same label maps."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from _service_helpers import TOK1, TOKENS, C, frame, tiny_cloud, tiny_device

from tandemseg.cloud.app import Limits, create_app, running_server
from tandemseg.cloud.auth import TokenMap
from tandemseg.cloud.batching import BatchConfig
from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.codec import CodecConfig, FeatureCodec, device_fingerprint, load_codec, save_codec
from tandemseg.codec.split import resolve_config
from tandemseg.data.classes import CAMVID
from tandemseg.device.budget import FixedSelection
from tandemseg.device.http_link import HttpLink, RetryPolicy
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import make_policy
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.steps import make_device_steps
from tandemseg.errors import SpecError
from tandemseg.wire import http as wire
from tandemseg.wire.messages import UploadRequest
from tandemseg.wire.payload import FEATURES

H, W = 64, 96
CODEC_TINY = {"se_channels": 8, "latent_channels": 8, "hyper_channels": 8, "aspp_channels": 8, "up_channels": 8,
              "task_channels": 8, "K": 2, "num_classes": C}


def tiny_codec(device: torch.nn.Module, folder: Path, seed: int = 0) -> FeatureCodec:
    """An untrained codec at the device's stage 2, saved and loaded back as a real checkpoint (ids set)."""
    torch.manual_seed(seed)
    codec = FeatureCodec(resolve_config(CodecConfig(split="2", **CODEC_TINY), device.feature_info)).eval()
    save_codec(folder, codec, device_fingerprint(device), data="synthetic", recipe="tests: tiny untrained codec")
    return load_codec(folder, device=device).codec


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    device = tiny_device()
    codec = tiny_codec(device, tmp_path_factory.mktemp("codec"))
    other = tiny_codec(device, tmp_path_factory.mktemp("other"), seed=1)  # same device, other weights: foreign bytes
    service = CloudService(ModelSegmenter(tiny_cloud(), codec), CAMVID)
    app = create_app(service, TokenMap.parse(TOKENS), Limits(), BatchConfig(max_batch=2, max_wait_ms=5))
    with running_server(app) as url:
        yield device, codec, other, url


def feature_runtime(device, codec, link) -> DeviceRuntime:
    model_step, payload = make_device_steps(device, FEATURES, "dev1", False, codec)
    return DeviceRuntime(model_step, make_policy("all"), FixedSelection([]), link, payload=payload)


def test_http_and_in_process_feature_uploads_give_the_same_maps(setup):
    device, codec, _, url = setup
    link = HttpLink(url, TOK1, device_id="dev1", retry=RetryPolicy(timeout_s=30.0, deadline_s=60.0))
    over_http = feature_runtime(device, codec, link)
    in_process = feature_runtime(device, codec, InProcessLink(CloudService(ModelSegmenter(tiny_cloud(), codec), CAMVID)))
    try:
        for i in range(3):
            got = over_http.finish(over_http.process(frame(i, H, W), i), timeout=60)
            ref = in_process.finish(in_process.process(frame(i, H, W), i))
            assert got.provenance == ref.provenance == "cloud"
            assert got.label.shape == (H, W) and np.array_equal(got.label, ref.label)
            assert 0 < got.bytes_up < H * W  # a few bytes of bitstream, far below one byte per pixel
    finally:
        over_http.close()
        in_process.close()


def post_features(url: str, payload: bytes, height: int = H, width: int = W) -> httpx.Response:
    req = UploadRequest("dev1", 0, payload, FEATURES, height, width)
    headers, body = wire.encode_request(req, TOK1)
    return httpx.post(url + wire.SEGMENT_PATH, content=body, headers=headers, timeout=30)


def a_bitstream(device, codec) -> bytes:
    model_step, payload = make_device_steps(device, FEATURES, "dev1", False, codec)
    out = model_step.run(frame(5, H, W), 0)
    return payload.build(frame(5, H, W), 0, out, 0).payload


@pytest.mark.parametrize("case", ["foreign", "truncated", "flipped", "wrong-size"])
def test_bad_bitstreams_are_refused_with_a_4xx_that_says_why(setup, case):
    device, codec, other, url = setup
    data = a_bitstream(device, other if case == "foreign" else codec)
    height = H
    if case == "truncated":
        data = data[: len(data) // 2]
    elif case == "flipped":
        data = data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:]
    elif case == "wrong-size":
        height = H + 32
    r = post_features(url, data, height)
    assert 400 <= r.status_code < 500, r.text
    message = r.json()["error"]
    assert "Traceback" not in r.text
    expected = {"foreign": "codec", "truncated": "bitstream", "flipped": "bitstream", "wrong-size": "frame"}[case]
    assert expected in message.lower()


def test_a_server_without_a_codec_says_how_to_start_one(setup, tmp_path):
    device, codec, _, _ = setup
    app = create_app(CloudService(ModelSegmenter(tiny_cloud()), CAMVID), TokenMap.parse(TOKENS), Limits(), BatchConfig())
    with running_server(app) as url:
        r = post_features(url, a_bitstream(device, codec))
    assert r.status_code == 400 and "--codec-ckpt" in r.json()["error"]


def test_features_without_a_codec_are_refused_where_the_steps_are_built():
    with pytest.raises(SpecError, match="--feature-codec"):
        make_device_steps(tiny_device(), FEATURES)
