"""MESS multi-exit segmentation (tandemseg.exits): heads, network inference modes, losses, training steps,
confidence (eq. 7-9) and ONNX export, on the tiny device model."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import DEVICE_TINY

from tandemseg.errors import SpecError
from tandemseg.exits.confidence import image_confidence, image_confidences, logits_confidence, semantic_edges
from tandemseg.exits.heads import ExitSpec, build_exit, exit_space
from tandemseg.exits.losses import (
    ce_loss,
    distillation_loss,
    round_robin_exit,
    stage1_loss,
    stage2_loss,
)
from tandemseg.exits.network import FINAL, MultiExitSegmenter, parse_exit_key
from tandemseg.exits.train import (
    fit,
    freeze_backbone,
    optimizer,
    stage1_network,
    stage1_step,
    stage2_network,
    stage2_step,
)
from tandemseg.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

HW = (32, 48)  # frame size: the tiny device sees 16x24, its deepest stage 2x3
POINTS = [1, 2, 3]
SPECS = [ExitSpec(), ExitSpec(2, 1, True, "dlb")]


def trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics (a few train-mode passes), then eval mode."""
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(2, 3, *HW))
    return net.eval()


@pytest.fixture
def net() -> MultiExitSegmenter:
    torch.manual_seed(0)
    return trained_like(MultiExitSegmenter(build_model("device", DEVICE_TINY), POINTS, [SPECS] * len(POINTS)))


def stage_calls(net: MultiExitSegmenter) -> dict[int, int]:
    """Counts forward calls of every stage module and of the decoder (key -1) from now on."""
    calls = {i: 0 for i in range(len(net.feature_info))}
    for i, info in enumerate(net.feature_info):
        net.base.encoder.get_submodule(info["module"]).register_forward_pre_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
    calls[-1] = 0
    net.base.classifier.register_forward_pre_hook(lambda *_a: calls.__setitem__(-1, calls[-1] + 1))
    return calls


# ----------------------------------------------------------------------------- heads (eq. 1)


def test_exit_space_is_eq1() -> None:
    space = exit_space()
    assert len(space) == 4 * 3 * 2 * 2 and len({s.name for s in space}) == len(space)
    for spec in space:
        assert ExitSpec.from_name(spec.name) == spec == ExitSpec.from_json(spec.to_json())
    assert ExitSpec(1, 2, True).dilations() == ((2, 4), 8) and ExitSpec(1, 2, False).dilations() == ((1, 1), 1)
    with pytest.raises(SpecError):
        ExitSpec(crm=3)
    with pytest.raises(SpecError):
        ExitSpec(head="psp")


def test_every_exit_keeps_the_stage_resolution() -> None:
    feat = torch.rand(2, 16, 6, 9)
    for spec in exit_space():
        head = build_exit(spec, 16, 5).eval()
        assert head(feat).shape == (2, 5, 6, 9), spec
        crm = head.crm[0] if spec.crm > 1 else None
        assert crm is None or crm.out_channels == 16 // spec.crm


# ----------------------------------------------------------------------------- network


def test_all_exits_at_output_resolution_and_final_is_the_base(net: MultiExitSegmenter) -> None:
    frame = torch.rand(2, 3, *HW)
    with torch.no_grad():
        out = net(frame)
        assert set(out) == {*net.exit_keys, FINAL} and len(net.exit_keys) == len(POINTS) * len(SPECS)
        assert all(v.shape == (2, 11, *HW) for v in out.values())
        assert torch.equal(out[FINAL], net.base(frame))
        for key in net.exit_keys:
            torch.testing.assert_close(net.forward_exit(frame, key), out[key], rtol=0, atol=1e-6)
    assert [net.stage_of(k) for k in net.exit_keys] == sorted(net.stage_of(k) for k in net.exit_keys)
    rebuilt = MultiExitSegmenter.from_exit_config(net.base, net.exit_config())
    assert rebuilt.exit_keys == net.exit_keys


def test_budgeted_exit_does_not_run_later_stages(net: MultiExitSegmenter) -> None:
    calls = stage_calls(net)
    key = next(k for k in net.exit_keys if net.stage_of(k) == 2)
    with torch.no_grad():
        net.forward_exit(torch.rand(1, 3, *HW), key)
    assert [calls[i] for i in range(5)] == [1, 1, 1, 0, 0] and calls[-1] == 0


def test_early_exit_equals_that_exit_alone_and_stops(net: MultiExitSegmenter) -> None:
    frame = torch.rand(1, 3, *HW)
    path = [k for k in net.exit_keys if k.endswith("fcn")]  # one exit per point, stages 1, 2, 3
    with torch.no_grad():
        alone = {k: net.forward_exit(frame, k) for k in [*path, FINAL]}
        calls = stage_calls(net)
        first = net.input_dependent(frame, path, thresholds=[0.0, 0.0, 0.0])  # c_img >= 0 always: exit 1
        assert first.exits == [path[0]] and torch.equal(first.logits, alone[path[0]])
        assert [calls[i] for i in range(5)] == [1, 1, 0, 0, 0] and calls[-1] == 0
        # The first exit refuses (th_img above any fraction), the second accepts: stage 3 and the decoder never run.
        calls.update(dict.fromkeys(calls, 0))
        second = net.input_dependent(frame, path, thresholds=[1.1, 0.0, 0.0])
        assert second.exits == [path[1]] and torch.equal(second.logits, alone[path[1]])
        assert [calls[i] for i in range(5)] == [1, 1, 1, 0, 0] and calls[-1] == 0
        native = net.exit_native(path[0], net.encode(frame, [path[0]]))[0]
        assert second.confidences[0][0] == logits_confidence(native, 0.8, True)
        last = net.input_dependent(frame, path, thresholds=[1.1, 1.1, 1.1])
        assert last.exits == [FINAL] and torch.equal(last.logits, alone[FINAL]) and len(last.confidences[0]) == 3


def test_input_dependent_batch_decides_per_frame(net: MultiExitSegmenter) -> None:
    frames = torch.rand(3, 3, *HW)
    path = [net.exit_keys[0]]
    with torch.no_grad():
        confs = [logits_confidence(net.exit_native(path[0], net.encode(f[None], path))[0], 0.5) for f in frames]
        th = sorted(confs)[1]  # the two frames at or above the median exit early
        res = net.input_dependent(frames, path, thresholds=[th], pixel_thresholds=0.5)
        assert res.exits == [path[0] if c >= th else FINAL for c in confs]
        for i, k in enumerate(res.exits):
            assert torch.equal(res.logits[i : i + 1], net.forward_exit(frames[i : i + 1], k))


def test_anytime_delivers_in_order_and_honours_the_deadline(net: MultiExitSegmenter) -> None:
    frame = torch.rand(1, 3, *HW)
    path = [k for k in net.exit_keys if k.endswith("fcn")][:2]
    seen = []
    with torch.no_grad():
        full = net.anytime(frame, [*path, FINAL], on_exit=lambda r: seen.append(r.key))
        assert seen == [*path, FINAL] and full.latest.key == FINAL
        for r in full.results:
            assert torch.equal(r.logits, net.forward_exit(frame, r.key))
        ticks = iter(range(100))  # a fake clock: start = 0, then 1 s per exit
        calls = stage_calls(net)
        timed = net.anytime(frame, [*path, FINAL], deadline_s=1.5, clock=lambda: float(next(ticks)))
    assert [r.key for r in timed.results] == path[:1] and [r.key for r in timed.late] == path[1:2]
    assert timed.latest.key == path[0] and calls[3] == 0 and calls[-1] == 0  # stopped after the late exit


def test_paths_are_checked(net: MultiExitSegmenter) -> None:
    same_stage = [k for k in net.exit_keys if net.stage_of(k) == 1]
    with pytest.raises(SpecError):
        net.check_path(same_stage)
    with pytest.raises(SpecError):
        net.check_path([FINAL, net.exit_keys[0]])
    with pytest.raises(SpecError):
        net.input_dependent(torch.rand(1, 3, *HW), net.exit_keys[:1], thresholds=[0.5, 0.5])
    assert parse_exit_key(net.exit_keys[0]) == (1, SPECS[0])


# ----------------------------------------------------------------------------- losses and training (eq. 2, 3)


def test_exit_dropout_touches_final_and_exactly_one_early_exit() -> None:
    torch.manual_seed(0)
    net = stage1_network(build_model("device", DEVICE_TINY), POINTS).train()
    opt = optimizer(net, lr=1e-3)
    frames, labels = torch.rand(2, 3, *HW), torch.randint(0, 11, (2, *HW))
    chosen = []
    for step in range(2 * len(net.exit_keys)):
        record = stage1_step(net, opt, frames, labels, step)
        with_grad = [k for k in net.exit_keys if any(p.grad is not None for p in net.heads[k].parameters())]
        assert with_grad == record["exits"] and len(with_grad) == 1, (step, with_grad)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.heads[with_grad[0]].parameters())
        assert net.base.classifier.weight.grad.abs().sum() > 0  # the final exit
        assert net.base.encoder.stem[0][0].weight.grad.abs().sum() > 0  # the backbone, end to end
        chosen += record["exits"]
    assert chosen == net.exit_keys * 2  # round robin
    assert [round_robin_exit(j, 3) for j in range(5)] == [0, 1, 2, 0, 1]


def test_exit_dropout_loss_is_ce_of_final_plus_the_chosen_exit() -> None:
    torch.manual_seed(0)
    outs = {k: torch.randn(1, 4, 5, 5) for k in ("a", "b", FINAL)}
    target = torch.randint(0, 4, (1, 5, 5))
    loss, chosen = stage1_loss(outs, ["a", "b"], FINAL, target, step=3)
    ce = torch.nn.functional.cross_entropy
    assert chosen == ["b"] and torch.isclose(loss, ce(outs[FINAL], target) + ce(outs["b"], target))
    loss, chosen = stage1_loss(outs, ["a", "b"], FINAL, target, step=3, schedule="all")  # Table 5's end-to-end row
    assert chosen == ["a", "b"] and torch.isclose(loss, ce(outs[FINAL], target) + ce(outs["a"], target) + ce(outs["b"], target))
    loss, chosen = stage1_loss(outs, ["a", "b"], FINAL, target, step=3, schedule="final")  # the single-exit control
    assert chosen == [] and torch.isclose(loss, ce(outs[FINAL], target))
    with pytest.raises(SpecError, match="dropout, all, final"):
        stage1_loss(outs, ["a", "b"], FINAL, target, step=3, schedule="some")


def pfd_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 1x4x4 scene with 3 classes: the teacher (final exit) is right on the top half, wrong on the bottom."""
    torch.manual_seed(0)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :, 2:] = 1
    teacher_pred = target.clone()
    teacher_pred[0, 2:] = 2  # bottom half: the final exit says class 2, the label says 0/1
    teacher = torch.nn.functional.one_hot(teacher_pred, 3).permute(0, 3, 1, 2).float() * 4.0  # (1, 3, 4, 4)
    student = torch.randn(1, 3, 4, 4, requires_grad=True)
    wrong = teacher_pred != target  # (1, 4, 4)
    return student, teacher, target, wrong


def test_pfd_ignores_the_labels_where_the_final_exit_is_wrong() -> None:
    student, teacher, target, wrong = pfd_case()
    relabelled = target.clone()
    relabelled[wrong] = 1 - target[wrong]  # other (still not the teacher's) labels on the wrong pixels only
    for kind in ("pfd", "kd", "ce"):
        a = stage2_loss(kind, [student], teacher, target)
        b = stage2_loss(kind, [student], teacher, relabelled)
        (ga,) = torch.autograd.grad(a, student)
        (gb,) = torch.autograd.grad(b, student)
        if kind == "pfd":
            assert torch.equal(a, b) and torch.equal(ga, gb)
            assert ga[..., 2:, :].abs().sum() > 0  # wrong pixels still learn from the teacher (KL term of eq. 3)
        else:
            assert not torch.isclose(a, b)


def test_pfd_filter_kd_ignores_the_teacher_where_it_is_wrong() -> None:
    student, teacher, target, wrong = pfd_case()
    other = teacher.clone()
    other[:, 0][wrong] += 1.0  # a different (still wrong) teacher distribution on the wrong pixels
    a = distillation_loss([student], teacher, target, filter_kd=True)
    b = distillation_loss([student], other, target, filter_kd=True)
    (grad,) = torch.autograd.grad(a, student)
    assert torch.equal(a, b) and grad[..., 2:, :].abs().sum() == 0
    # Where the teacher is right everywhere, PFD is plain KD.
    right = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 4.0
    assert torch.isclose(distillation_loss([student], right, target), distillation_loss([student], right, target, positive_filter=False))
    assert torch.isclose(ce_loss([student, student], target), 2 * torch.nn.functional.cross_entropy(student, target))


def test_pfd_skips_void_pixels() -> None:
    student, teacher, target, _ = pfd_case()
    void = target.clone()
    void[0, 0, 0] = 255
    assert torch.isfinite(distillation_loss([student], teacher, void))


def test_stage2_trains_heads_only() -> None:
    torch.manual_seed(0)
    stage1 = stage1_network(build_model("device", DEVICE_TINY), POINTS)
    net = trained_like(stage2_network(stage1, SPECS))
    assert len(net.exit_keys) == len(POINTS) * len(SPECS)
    freeze_backbone(net)
    base_state = {k: v.clone() for k, v in net.base.state_dict().items()}
    heads_before = {k: v.clone() for k, v in net.heads.state_dict().items()}
    opt = optimizer(net)
    frames, labels = torch.rand(2, 3, *HW), torch.randint(0, 11, (2, *HW))
    for loss in ("pfd", "ce", "kd"):
        assert np.isfinite(stage2_step(net, opt, frames, labels, loss)["loss"])
    assert all(torch.equal(v, base_state[k]) for k, v in net.base.state_dict().items())  # weights and BN stats
    assert any(not torch.equal(v, heads_before[k]) for k, v in net.heads.state_dict().items())
    with pytest.raises(SpecError):
        stage2_step(net, opt, frames, labels, "dice")


def test_tiny_loop_runs_both_stages() -> None:
    torch.manual_seed(0)
    net = stage1_network(build_model("device", DEVICE_TINY), POINTS[:2])
    batches = [(torch.rand(2, 3, *HW), torch.randint(0, 11, (2, *HW)))]
    h1 = fit(net, batches, stage=1, steps=2)
    h2 = fit(stage2_network(net, SPECS), batches, stage=2, steps=2, loss="pfd")
    assert [r["exits"] for r in h1] == [[k] for k in net.exit_keys] and all(np.isfinite(r["loss"]) for r in h1 + h2)


# ----------------------------------------------------------------------------- confidence (eq. 7-9)


def test_confidence_is_one_implementation_shared_with_the_upload_policy() -> None:
    """Exits and the `confidence` upload policy score frames with the same eq. 7-9 code."""
    from tandemseg.device import policies

    assert policies.image_confidence is image_confidence
    rng = torch.Generator().manual_seed(0)
    for trial in range(12):
        c, h, w = 2 + trial % 4, 7 + trial, 9 + 2 * trial
        probs = (torch.randn(c, h, w, generator=rng) * (1 + trial % 3)).softmax(0)
        assert np.array_equal(image_confidences(probs, [0.4, 0.8]), [image_confidence(probs, 0.4), image_confidence(probs, 0.8)])


def test_edge_smoothing_on_a_constructed_image() -> None:
    """Two regions meeting at a vertical edge; only the band along the edge is unsure (as at object borders)."""
    h, w = 12, 16
    top1 = torch.full((h, w), 0.95)
    top1[:, 9:11] = 0.55  # the two columns either side of the label edge
    top1[2:5, 1:4] = 0.55  # an unsure 3x3 blob inside the left region, out of reach of the edge windows
    cls = torch.zeros(h, w, dtype=torch.long)
    cls[:, 10:] = 1
    probs = torch.stack([torch.where(cls == 0, top1, 1 - top1), torch.where(cls == 1, top1, 1 - top1)])  # (2, h, w)
    edges = semantic_edges(cls.numpy(), 1)
    assert edges[:, 8:12].all() and not edges[:, :8].any() and not edges[:, 12:].any()  # edge columns 9-10, widened by 1
    plain = image_confidence(probs, 0.8, edge_smoothing=False)
    smoothed = image_confidence(probs, 0.8, edge_smoothing=True)
    assert plain == pytest.approx(1 - (24 + 9) / 192)
    assert smoothed == pytest.approx(1 - 9 / 192)  # eq. 9 forgives the edge band (median of 5x5 = 0.95), not the blob


# ----------------------------------------------------------------------------- ONNX


def test_onnx_exit_segment_parity(net: MultiExitSegmenter, tmp_path: Path) -> None:
    from tandemseg.exits.export import exits_onnx_parity, export_exits_onnx

    key = next(k for k in net.exit_keys if net.stage_of(k) == 2 and k.endswith("dlb"))
    frames = torch.rand(3, 3, *HW)  # batch 3 against a trace with batch 2: the dynamic axis works
    one = export_exits_onnx(net, tmp_path / "exit.onnx", [key], HW)
    parity = exits_onnx_parity(net, one, frames, [key])
    assert parity[key]["max_abs_diff"] < 1e-4 and parity[key]["argmax_agreement"] > 0.99, parity
    keys = [net.exit_keys[0], key, FINAL]
    every = exits_onnx_parity(net, export_exits_onnx(net, tmp_path / "all.onnx", keys, HW), frames, keys)
    assert all(v["max_abs_diff"] < 1e-4 for v in every.values()), every
    assert not net.training


# ----------------------------------------------------------------------------- layering


def test_exits_stay_below_device_in_the_layers() -> None:
    """device/ will import exits/ (confidence now, the network later), so exits/ must not import upward."""
    pkg = Path(__file__).resolve().parents[1] / "src" / "tandemseg" / "exits"
    upward = ("tandemseg.eval", "tandemseg.cli", "tandemseg.cloud", "tandemseg.device", "tandemseg.train")
    for path in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(upward), f"{path.name} imports {node.module}"
                if path.name == "confidence.py":
                    assert not node.module.startswith("tandemseg"), "confidence.py must stay import-light for device/"


def test_exit_policies_pick_the_first_confident_exit_and_the_oracle_the_first_good_one() -> None:
    from tandemseg.eval.exit_policies import exit_at_threshold, oracle_exit

    score = np.array([[0.9, 0.2, 1.0], [0.1, 0.95, 1.0], [0.1, 0.2, 1.0]])  # 3 frames x (2 early exits + final)
    assert exit_at_threshold(score, 0.9).tolist() == [0, 1, 2]
    assert exit_at_threshold(score, 0.0).tolist() == [0, 0, 0]
    cms = np.zeros((2, 3, 2, 2), dtype=np.int64)
    cms[:, :, 0, 0] = [[5, 9, 9], [9, 7, 10]]  # correct pixels per exit
    cms[:, :, 0, 1] = [[5, 1, 1], [1, 3, 0]]  # wrong pixels per exit (10 labelled pixels each)
    assert oracle_exit(cms, 0.0).tolist() == [1, 2]  # frame 0: exit 1 is as good as the final; frame 1: only the final
    assert oracle_exit(cms, 0.15).tolist() == [1, 0]
