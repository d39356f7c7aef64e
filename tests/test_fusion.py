"""ACDC's CFE (fusion/, the runtime's FusionStep, the reply's probabilities): the properties the fusion issue asks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _service_helpers import TOK1, TOKENS, save_tiny, tiny_cloud, tiny_device
from typer.testing import CliRunner

from tandemseg.cli import app as cli_app
from tandemseg.cloud.app import Limits, ServerThread, create_app
from tandemseg.cloud.auth import TokenMap
from tandemseg.cloud.batching import BatchConfig
from tandemseg.cloud.service import CloudService, ModelSegmenter
from tandemseg.data.classes import CAMVID, ClassTable
from tandemseg.device.budget import FixedSelection
from tandemseg.device.http_link import HttpLink, RetryPolicy
from tandemseg.device.link import InProcessLink
from tandemseg.device.policies import make_policy
from tandemseg.device.runtime import DeviceRuntime
from tandemseg.device.steps import FusionStep, make_fuse_step, run_device
from tandemseg.errors import CheckpointError, SpecError
from tandemseg.eval.boundary import boundary_counts, boundary_f
from tandemseg.fusion.checkpoint import load_fusion, save_fusion
from tandemseg.fusion.config import FusionConfig
from tandemseg.fusion.engine import CLOUD_FLOOR, CollaborativeFusion
from tandemseg.fusion.refiners import PointRefiner, SparseRefiner, neighbourhoods, site_neighbourhoods
from tandemseg.models.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
C = CAMVID.num_classes


def randomised(cfg: FusionConfig, seed: int = 0) -> CollaborativeFusion:
    """A CFE whose zero-initialised output layers are filled too, so every path computes something."""
    torch.manual_seed(seed)
    fusion = CollaborativeFusion(cfg)
    with torch.no_grad():
        for p in fusion.parameters():
            p.normal_(0, 0.3)
    return fusion.eval()


def inputs(b: int = 1, h: int = 24, w: int = 34, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, C, max(1, h // 8), max(1, w // 8), generator=g).mul(3).softmax(1)  # (B, C, h/8, w/8)
    image = torch.rand(b, 3, h, w, generator=g)
    cloud = torch.randn(b, C, max(1, h // 4), max(1, w // 4), generator=g).mul(3).softmax(1)
    return coarse, image, cloud


def device_map(coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return torch.nn.functional.interpolate(coarse.log(), size=size, mode="bilinear", align_corners=False).argmax(1)


# ----------------------------------------------------------------------------- the modules


@pytest.mark.parametrize("refiner", [SparseRefiner, PointRefiner])
def test_only_masked_pixels_change_and_an_empty_mask_changes_nothing(refiner) -> None:
    torch.manual_seed(0)
    module = refiner(FusionConfig(num_classes=C, hidden=8))
    torch.nn.init.normal_(module.out.weight)  # zero-initialised: would change nothing anywhere
    logits, rgb = torch.randn(2, C, 12, 17), torch.rand(2, 3 * 4, 12, 17)  # 2 x 2 frame pixels per site
    mask = torch.rand(2, 12, 17) < 0.2
    correction = module(logits, rgb, mask)  # (B, C * 4, h, w)
    assert correction.shape == (2, C * 4, 12, 17)
    changed = (correction != 0).any(1)  # (B, h, w)
    assert changed[mask].all() and not changed[~mask].any()
    assert not module(logits, rgb, torch.zeros_like(mask)).any()


def test_the_neighbourhood_gathers_are_3x3_convolutions_at_the_gathered_pixels() -> None:
    torch.manual_seed(0)
    feats, weight = torch.randn(2, 4, 6, 7), torch.randn(3, 4, 3, 3)
    padded = torch.nn.functional.pad(feats, (1, 1, 1, 1), mode="replicate")  # the gather's border: replicate
    dense = torch.nn.functional.conv2d(padded, weight)  # (2, 3, 6, 7)
    index = torch.tensor([0, 6, 20, 41, 42, 83])  # corners of both frames and the middle
    gathered = neighbourhoods(feats, index)  # (6, 36)
    w = weight.permute(0, 2, 3, 1).reshape(3, -1)  # (3, 36) in the gather's order
    assert torch.allclose(gathered @ w.T, dense.transpose(0, 1).reshape(3, -1)[:, index].T, atol=1e-5)
    # the submanifold gather: features exist at the sites only, so a dense convolution over the map that is zero
    # off the sites, evaluated at the sites, is the same thing
    values = torch.randn(index.numel(), 4)
    sparse_map = torch.zeros(4, 2 * 6 * 7).index_copy(1, index, values.T).reshape(4, 2, 6, 7).transpose(0, 1)
    dense_sites = torch.nn.functional.conv2d(sparse_map, weight, padding=1).transpose(0, 1).reshape(3, -1)[:, index].T
    assert torch.allclose(site_neighbourhoods(values, index, (2, 6, 7)) @ w.T, dense_sites, atol=1e-5)


@pytest.mark.parametrize("refiner", ["sparse", "point", "dense"])
def test_an_untrained_cfe_is_the_device_without_the_cloud_and_the_cloud_with_it(refiner) -> None:
    fusion = CollaborativeFusion(FusionConfig(num_classes=C, refiner=refiner, hidden=8)).eval()
    coarse, image, cloud = inputs()
    size = image.shape[-2:]
    with torch.no_grad():
        assert torch.equal(fusion(coarse, image).argmax(1), device_map(coarse, size))
        floored = cloud.clamp_min(CLOUD_FLOOR).log()  # what uint8 probabilities can say
        cloud_map = torch.nn.functional.interpolate(floored, size=size, mode="bilinear").argmax(1)
        assert torch.equal(fusion(coarse, image, cloud).argmax(1), cloud_map)


def test_with_an_empty_mask_the_device_map_comes_back_unchanged() -> None:
    fusion = randomised(FusionConfig(num_classes=C, hidden=8, top_percent=0.0))
    coarse, image, _ = inputs()
    with torch.no_grad():
        assert torch.equal(fusion(coarse, image).argmax(1), device_map(coarse, image.shape[-2:]))


@pytest.mark.parametrize("refiner", ["sparse", "point", "dense"])
@pytest.mark.parametrize("size", [(24, 34), (9, 30), (17, 17), (1, 1)])
def test_fast_label_path_equals_the_logits_and_shapes_follow_the_frame(refiner, size) -> None:
    fusion = randomised(FusionConfig(num_classes=C, refiner=refiner, hidden=8, top_percent=25.0))
    coarse, image, cloud = inputs(1, *size)
    with torch.no_grad():
        logits = fusion(coarse, image)
        assert logits.shape == (1, C, *size) and fusion(coarse, image, cloud).shape == (1, C, *size)
        u8 = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        exact = fusion(coarse, torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 255).argmax(1)[0].numpy()
        pred = device_map(coarse, size)[0].numpy().astype(np.uint8)
        assert np.array_equal(fusion.local_label(coarse, u8, pred), exact)


def test_fusion_without_a_cloud_map_is_the_refinement_alone() -> None:
    fusion = randomised(FusionConfig(num_classes=C, hidden=8))
    coarse, image, cloud = inputs(2)
    with torch.no_grad():
        local, fused, _ = fusion.both(coarse, image, cloud)
        assert torch.equal(fusion(coarse, image), local) and torch.equal(fusion(coarse, image, cloud), fused)
        assert not torch.equal(local.argmax(1), fused.argmax(1))


def test_unknown_options_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(SpecError, match="sparse, point, dense"):
        FusionConfig(refiner="unet")
    with pytest.raises(SpecError, match="none, refine, cfe"):
        make_fuse_step("blend", None)
    with pytest.raises(SpecError, match="--fusion-ckpt"):
        make_fuse_step("cfe", None)


# ----------------------------------------------------------------------------- the checkpoint


def test_the_checkpoint_loads_from_its_card_and_refuses_another_device(tmp_path: Path) -> None:
    device = tiny_device()
    fusion = randomised(FusionConfig(num_classes=C, hidden=8))
    folder = save_fusion(tmp_path / "cfe", fusion, CAMVID, device, data="synthetic", recipe="tests", frame_hw=(24, 34))
    loaded = load_fusion(folder, device, expect_classes=CAMVID).fusion
    coarse, image, cloud = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(coarse, image, cloud), fusion(coarse, image, cloud))
    with pytest.raises(CheckpointError, match="trained on device checkpoint"):
        load_fusion(folder, tiny_device(seed=7))
    other = ClassTable(tuple(f"c{i}" for i in range(C)), CAMVID.palette)
    with pytest.raises(CheckpointError, match="label set"):
        load_fusion(folder, device, expect_classes=other)
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_fusion(folder, device)


# ----------------------------------------------------------------------------- in the runtime, both links


def stream(n: int = 4, h: int = 32, w: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def run_frames(link, fuse, uploads: list[int]) -> list:
    runtime = DeviceRuntime(tiny_device(), make_policy("entropy"), FixedSelection(uploads), link, device_id="dev1", fuse=fuse)
    results = [runtime.finish(runtime.process(f, i), timeout=60) for i, f in enumerate(stream())]
    runtime.close()
    return results


def test_cfe_runs_in_the_runtime_alike_in_process_and_over_http() -> None:
    fuse = FusionStep(randomised(FusionConfig(num_classes=C, hidden=8, top_percent=30.0)), "cfe")
    in_process = run_frames(InProcessLink(CloudService(ModelSegmenter(tiny_cloud()), CAMVID)), fuse, [1, 3])
    server = ServerThread(create_app(CloudService(ModelSegmenter(tiny_cloud()), CAMVID), TokenMap.parse(TOKENS), Limits(), BatchConfig(max_wait_ms=2)))
    url = server.start()
    try:
        over_http = run_frames(HttpLink(url, TOK1, device_id="dev1", retry=RetryPolicy(attempts=2, timeout_s=30, deadline_s=60)), fuse, [1, 3])
    finally:
        server.stop()
    assert [r.provenance for r in over_http] == ["device", "cloud", "device", "cloud"]
    for a, b in zip(in_process, over_http, strict=True):
        assert np.array_equal(a.label, b.label) and a.bytes_down == b.bytes_down
    device = tiny_device()
    for i in (0, 2):  # frames the cloud never saw: the refined device map, which differs from the plain one
        assert np.array_equal(over_http[i].label, fuse.local(run_device(device, stream()[i])))
    plain = run_frames(InProcessLink(CloudService(ModelSegmenter(tiny_cloud()), CAMVID)), make_fuse_step("none", None), [1, 3])
    assert all(r.bytes_down > p.bytes_down for r, p in zip(in_process[1::2], plain[1::2], strict=True))  # the probabilities cost bytes
    assert any(not np.array_equal(r.label, p.label) for r, p in zip(in_process, plain, strict=True))


def test_refine_mode_shows_the_cloud_map_for_answered_frames_and_asks_for_no_probabilities() -> None:
    fusion = randomised(FusionConfig(num_classes=C, hidden=8, top_percent=30.0))
    service = lambda: InProcessLink(CloudService(ModelSegmenter(tiny_cloud()), CAMVID))  # noqa: E731
    refine = run_frames(service(), FusionStep(fusion, "refine"), [1])
    plain = run_frames(service(), make_fuse_step("none", None), [1])
    assert np.array_equal(refine[1].label, plain[1].label) and refine[1].bytes_down == plain[1].bytes_down
    assert not np.array_equal(refine[0].label, plain[0].label)


# ----------------------------------------------------------------------------- boundary F-score


def test_boundary_f_is_one_for_a_perfect_map_and_drops_with_a_shifted_edge() -> None:
    label = np.zeros((40, 40), np.uint8)
    label[:, 20:] = 1
    assert boundary_f(boundary_counts(label, label)) == 1.0
    near, far = np.zeros_like(label), np.zeros_like(label)
    near[:, 22:] = 1  # 2 px off: within the 3 px tolerance
    far[:, 30:] = 1
    assert boundary_f(boundary_counts(near, label)) == 1.0 and boundary_f(boundary_counts(far, label)) == 0.0
    ignored = label.copy()
    ignored[:, 15:25] = 255  # both edges at 20 and 22 lie in an ignored band: nothing to score
    assert boundary_counts(near, ignored).tolist() == [0, 0, 0, 0] and boundary_f(boundary_counts(near, ignored)) is None
    assert boundary_counts(far, ignored).tolist() == [0, 80, 0, 0]  # an edge where the truth has none: unmatched


# ----------------------------------------------------------------------------- the CLI


def test_fusion_train_then_collab_with_cfe(tmp_path: Path) -> None:
    runner = CliRunner()
    dev, cloud = save_tiny(tmp_path / "dev", "device"), save_tiny(tmp_path / "cloud", "cloud")
    out = tmp_path / "cfe"
    res = runner.invoke(cli_app, ["fusion", "train", "--device-ckpt", str(dev), "--cloud-ckpt", str(cloud), "--data", "synthetic",
                                  "--out", str(out), "--train-limit", "3", "--val-limit", "2", "--epochs", "1", "--hidden", "8",
                                  "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "fusion" and set(card["metrics"]["val"]) >= {"device", "refined", "cloud", "fused"}
    common = ["collab", "--data", "synthetic", "--device-ckpt", str(dev), "--cloud-ckpt", str(cloud), "--limit", "4",
              "--policy", "entropy", "--rate", "0.5"]
    res = runner.invoke(cli_app, [*common, "--fusion", "cfe", "--fusion-ckpt", str(out), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["fusion"] == "cfe"
    res = runner.invoke(cli_app, [*common, "--fusion", "cfe"])
    assert isinstance(res.exception, SpecError) and "--fusion-ckpt" in str(res.exception)
    res = runner.invoke(cli_app, [*common, "--fusion", "cfe", "--fusion-ckpt", str(tmp_path / "missing")])
    assert isinstance(res.exception, CheckpointError) and "not found" in str(res.exception)
    other = save_checkpoint(tmp_path / "other", tiny_device(seed=5), "device", CAMVID, data="synthetic", recipe="tests")  # other weights
    res = runner.invoke(cli_app, [*common[:3], "--device-ckpt", str(other), *common[5:], "--fusion", "cfe", "--fusion-ckpt", str(out)])
    assert isinstance(res.exception, CheckpointError) and "trained on device checkpoint" in str(res.exception)


# ----------------------------------------------------------------------------- the reply's probabilities on the wire


def test_reply_probabilities_round_trip_and_bad_ones_are_refused() -> None:
    from tandemseg.wire import http as wire
    from tandemseg.wire.messages import CloudReply
    from tandemseg.wire.payload import CLOUD_PROB_LEVELS, encode_label_png, pack_probs, unpack_probs

    probs = np.random.default_rng(0).dirichlet(np.ones(C), size=(4, 6)).transpose(2, 0, 1)  # (C, 4, 6)
    reply = CloudReply(3, encode_label_png(np.zeros((16, 24), np.uint8)), u_matrix=np.eye(C, dtype=np.float32), u_version=2)
    reply.probs, reply.probs_shape = pack_probs(probs, CLOUD_PROB_LEVELS)
    headers, body = wire.encode_reply(reply)
    back = wire.decode_reply(headers, body, 3)
    assert back.probs == reply.probs and back.probs_shape == (C, 4, 6) and np.array_equal(back.u_matrix, reply.u_matrix)
    assert back.bytes_down == reply.bytes_down and np.abs(unpack_probs(back.probs, back.probs_shape) - probs).max() < 0.5 / CLOUD_PROB_LEVELS + 0.05
    too_long = {**headers, wire.H_CLOUD_PROBS_BYTES: str(len(body))}
    wrong_shape = {**headers, wire.H_CLOUD_PROBS_SHAPE: f"{C}x4x7"}
    for bad in (too_long, wrong_shape):
        with pytest.raises(wire.WireError):
            wire.decode_reply(bad, body, 3)
    label_only = {k: v for k, v in headers.items() if k not in (wire.H_U_SHAPE,)}
    with pytest.raises(wire.WireError):  # U's bytes are left over once the header that announces them is gone
        wire.decode_reply(label_only, body, 3)


def test_the_server_sends_probabilities_only_when_asked_and_refuses_a_bad_flag() -> None:
    import httpx
    from _service_helpers import upload

    from tandemseg.wire import http as wire

    server = ServerThread(create_app(CloudService(ModelSegmenter(tiny_cloud()), CAMVID), TokenMap.parse(TOKENS), Limits(), BatchConfig(max_wait_ms=2)))
    url = server.start()
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for ask in (False, True):
                req = upload(probs=False)
                req.reply_probs = ask
                headers, body = wire.encode_request(req, TOK1)
                res = client.post(wire.SEGMENT_PATH, headers=headers, content=body)
                assert res.status_code == 200 and (wire.H_CLOUD_PROBS_SHAPE in res.headers) == ask
                reply = wire.decode_reply(res.headers, res.content, req.frame_id)
                assert (reply.probs is not None) == ask
            headers[wire.H_REPLY_PROBS] = "yes"
            res = client.post(wire.SEGMENT_PATH, headers=headers, content=body)
            assert res.status_code == 400 and wire.H_REPLY_PROBS in res.json()["error"]
    finally:
        server.stop()


def test_a_reply_the_fuse_step_cannot_use_keeps_the_cloud_map() -> None:
    from tandemseg.wire.messages import CloudReply
    from tandemseg.wire.payload import CLOUD_PROB_LEVELS, encode_label_png, pack_probs

    class WrongClasses:
        """A cloud answering with probabilities of another label set (5 classes)."""

        def submit(self, request):
            from concurrent.futures import Future

            reply = CloudReply(request.frame_id, encode_label_png(np.full((request.height, request.width), 2, np.uint8)))
            reply.probs, reply.probs_shape = pack_probs(np.full((5, 8, 12), 0.2), CLOUD_PROB_LEVELS)
            done = Future()
            done.set_result(reply)
            return done

        def close(self) -> None:
            pass

    results = run_frames(WrongClasses(), FusionStep(randomised(FusionConfig(num_classes=C, hidden=8)), "cfe"), [1])
    assert results[1].provenance == "cloud" and (results[1].label == 2).all() and "5 classes" in results[1].extra["fuse_error"]


def test_the_committed_synthetic_cfe_loads_for_its_device_only() -> None:
    from tandemseg.data.spec import open_dataset
    from tandemseg.models.checkpoint import load_checkpoint

    root = Path(__file__).resolve().parents[1] / "checkpoints"
    device = load_checkpoint(root / "synthetic-device", expect_kind="device").model
    ck = load_fusion(root / "synthetic-fusion", device, expect_classes=CAMVID)
    assert ck.card["device_ckpt"] == "checkpoints/synthetic-device" and "fusion train" in ck.card["recipe"]
    frame = open_dataset("synthetic", "val")[0].image
    out = run_device(device, frame)
    label = FusionStep(ck.fusion, "cfe").local(out)
    assert label.shape == frame.shape[:2] and label.dtype == np.uint8
    with pytest.raises(CheckpointError, match="trained on device checkpoint"):
        load_fusion(root / "synthetic-fusion", load_checkpoint(root / "camvid-device").model)
