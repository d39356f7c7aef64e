"""The cloud service without HTTP: inference, its small parts (uploads, DCAM, the per-device store), and DCAM
following the settings a U was fitted with. Real tiny models and the real DCAM, no stand-ins."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _service_helpers import C, save_tiny, tiny_cloud, upload

from tandemseg.cloud.dcam import Dcam, DcamSettings, dcam_update
from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.cloud.states import DeviceStateStore
from tandemseg.cloud.uploads import decode_upload
from tandemseg.data.classes import CAMVID
from tandemseg.device.uncertainty import UncertaintyMatrix
from tandemseg.jsonio import dumps, json_safe
from tandemseg.wire import http as wire
from tandemseg.wire.payload import PayloadError, decode_label_png, unpack_probs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cloud():
    return tiny_cloud()


def expected_u(u: np.ndarray, req, reply, alpha: float, settings: DcamSettings) -> np.ndarray:
    """What one DCAM step makes of `u` for this upload, computed without the service."""
    probs = unpack_probs(req.device_probs, req.device_probs_shape)
    return dcam_update(u, probs, decode_label_png(reply.label_png), alpha, settings=settings)[0]


def test_each_device_gets_its_own_dcam_updates(cloud) -> None:
    service = CloudService(ModelSegmenter(cloud), CAMVID, dcam_alpha=0.5, initial_u=np.eye(C))
    a1, a2, b = upload("a", 0, seed=1), upload("a", 1, seed=2), upload("b", 0, probs=False)
    r1 = service.segment_batch([a1])[0]
    u1 = expected_u(np.eye(C), a1, r1, 0.5, DcamSettings())
    assert r1.u_version == 1 and np.allclose(r1.u_matrix, u1, atol=1e-6)
    r2 = service.segment_batch([a2])[0]
    assert r2.u_version == 2 and np.allclose(r2.u_matrix, expected_u(u1, a2, r2, 0.5, DcamSettings()), atol=1e-6)
    rb = service.segment_batch([b])[0]  # no probabilities, fresh device: nothing to send
    assert rb.u_matrix is None and rb.u_version == 0
    assert service.device_state("a")["dcam_updates"] == 2 and service.device_state("b")["frames"] == 1
    again = service.segment_batch([upload("a", 2, probs=False)])[0]
    a2_up_to_date = upload("a", 3, probs=False)
    a2_up_to_date.u_version = 2
    assert again.u_matrix is not None  # the device says version 0: it gets U again
    assert service.segment_batch([a2_up_to_date])[0].u_matrix is None  # it holds version 2 already


def test_dcam_follows_the_settings_the_u_was_fitted_with(cloud) -> None:
    req = upload("a", 0, seed=3)
    fitted = DcamSettings(stats="set", lam=0.9, gamma=2.0)
    plain = CloudService(ModelSegmenter(cloud), CAMVID, 0.5, np.eye(C)).segment_batch([req])[0]
    follow = CloudService(ModelSegmenter(cloud), CAMVID, 0.5, np.eye(C), dcam_settings=fitted).segment_batch([req])[0]
    assert np.allclose(follow.u_matrix, expected_u(np.eye(C), req, follow, 0.5, fitted), atol=1e-6)
    assert not np.allclose(follow.u_matrix, plain.u_matrix, atol=1e-4)  # the settings matter


def test_serve_reads_dcam_settings_from_the_u_file(tmp_path) -> None:
    from tandemseg.cli.service import initial_u_and_dcam_settings

    ckpt = save_tiny(tmp_path / "cloud", "cloud")
    meta = {"stats": "set", "lambda": 0.7, "gamma": 2.0, "feature": "entropy", "kernel": None}
    path = UncertaintyMatrix(np.eye(C), CAMVID, meta).save(tmp_path / "u.safetensors")
    u, settings = initial_u_and_dcam_settings(path, ckpt)
    assert np.array_equal(u, np.eye(C))
    assert (settings.stats, settings.lam, settings.gamma, settings.feature) == ("set", 0.7, 2.0, "entropy")
    assert initial_u_and_dcam_settings(None, ckpt) == (None, DcamSettings())


def test_segment_is_stateless_and_pairs_replies_with_evidence(cloud) -> None:
    service = CloudService(ModelSegmenter(cloud), CAMVID, dcam_alpha=0.5, initial_u=np.eye(C))
    out = service.segment([upload("a", 0), upload("a", 1, probs=False)])
    assert [reply.frame_id for reply, _ in out] == [0, 1]
    assert out[0][1] is not None and out[1][1] is None  # evidence needs the device's probabilities
    assert service.device_state("a")["frames"] == 0  # no state was touched
    assert CloudService(ModelSegmenter(cloud), CAMVID).segment([upload("a", 0)])[0][1] is None  # DCAM off: no evidence


def test_uploads_are_checked_before_the_forward() -> None:
    req = upload("a", 0)
    req.height += 1
    with pytest.raises(PayloadError, match="request says"):
        decode_upload(req)
    req = upload("a", 0)
    req.protocol_version = 99
    with pytest.raises(PayloadError, match="protocol 99"):
        decode_upload(req)


def test_store_copies_initial_u_and_refuses_bad_matrices() -> None:
    start = np.eye(C)
    store = DeviceStateStore(C, start, Dcam(0.5))
    state = store.get("x")
    assert state["u"] == np.eye(C).tolist() and state["u_version"] == 0
    start[0, 0] = 9.0  # the caller's array is not the devices' U
    assert store.get("y")["u"][0][0] == 1.0
    with pytest.raises(ValueError, match="finite"):
        store.set("x", np.full((C, C), np.nan))
    with pytest.raises(ValueError, match=f"\\({C}, {C}\\)"):
        store.set("x", np.eye(3))
    assert store.set("x", 2 * np.eye(C), version=5)["u_version"] == 5
    assert store.record("x", 5, None) == (None, 5)  # up to date: nothing to send
    u, version = store.record("x", 4, None)
    assert version == 5 and u.dtype == np.float32 and np.array_equal(u, 2 * np.eye(C))
    assert DeviceStateStore(C).get("z")["u"] is None  # no initial U: unknown until the device PUTs one


def test_dcam_refuses_alpha_outside_the_unit_interval(cloud) -> None:
    with pytest.raises(ValueError, match="dcam_alpha"):
        CloudService(ModelSegmenter(cloud), CAMVID, dcam_alpha=1.5)


def test_one_json_sanitiser() -> None:
    import torch

    obj = {1: np.float32(0.5), "nan": float("nan"), "arr": np.array([[1.0, np.inf]]), "t": (np.int64(3), torch.tensor(2.5))}
    assert json_safe(obj) == {"1": 0.5, "nan": None, "arr": [[1.0, None]], "t": [3, 2.5]}
    assert json.loads(dumps(obj))["arr"] == [[1.0, None]]
    with pytest.raises(TypeError):
        dumps({"x": object()})  # no silent str() of what JSON cannot hold
    assert not any(isinstance(v, float) and math.isnan(v) for v in json_safe([float("nan")]))


@pytest.mark.parametrize("header, canonical", [("png", "png"), ("JPEG:90", "jpeg:90"), (" webp:007 ", "webp:7")])
def test_codec_header_goes_through_the_one_parser(header: str, canonical: str) -> None:
    assert wire.parse_codec(header) == canonical


@pytest.mark.parametrize("header", ["png:", "png:5", "jpeg", "jpeg: 90", "jpeg:+90", "jpeg:9_0", "jpeg:1000", "webp:0", "gif", "jpeg:90" + " " * 50 + "x"])
def test_codec_header_refusals(header: str) -> None:
    with pytest.raises(wire.WireError, match="X-Tandemseg-Codec"):
        wire.parse_codec(header)


def test_a_cloud_that_lost_its_state_gets_the_devices_u_back(cloud) -> None:
    """A restart empties the cloud's store: the device sees a reply older than its U, checks the cloud's version and
    announces its U, so DCAM goes on from the device's U (not from the shipped one) and the device never regresses."""
    from _service_helpers import tiny_device

    from tandemseg.device.budget import BudgetSpec, make_controller
    from tandemseg.device.link import InProcessLink
    from tandemseg.device.policies import make_policy
    from tandemseg.device.runtime import DeviceRuntime

    service = CloudService(ModelSegmenter(cloud), CAMVID, dcam_alpha=0.5, initial_u=np.eye(C))
    um = UncertaintyMatrix(np.eye(C), CAMVID)
    rt = DeviceRuntime(tiny_device(), make_policy("all"), make_controller(BudgetSpec(rate=1.0)), InProcessLink(service),
                       device_id="dev1", send_device_probs=True, uncertainty=um)
    frames = [np.random.default_rng(i).integers(0, 256, (32, 48, 3), dtype=np.uint8) for i in range(6)]
    for i in range(3):
        rt.finish(rt.process(frames[i], i))
    before, u_before = um.version, um.u.copy()
    assert before >= 2
    service.states = DeviceStateStore(C, np.eye(C), service.dcam)  # the restart: every device's state is gone
    result = rt.finish(rt.process(frames[3], 3))
    assert result.extra.get("u_announced") == before and um.version == before and np.array_equal(um.u, u_before)
    state = service.device_state("dev1")
    assert state["u_version"] == before and np.allclose(state["u"], u_before)
    for i in (4, 5):  # DCAM continues from the device's U: versions move on past it
        rt.finish(rt.process(frames[i], i))
    assert um.version > before
