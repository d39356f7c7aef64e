"""The ACDC uncertainty decoupler: eq. 5 statistics, the closed form (eq. 18-19), the contrastive fit
(eq. 6-8), the score (eq. 9), pixel entropy and its mask (eq. 11-12), and the U file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tandemseg.data.classes import CAMVID, ClassTable
from tandemseg.device import uncertainty as U

C4 = ClassTable(("a", "b", "c", "d"), ((0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3)))


def dirichlet_moment(alpha: np.ndarray) -> np.ndarray:
    """E[q q^T] for q ~ Dirichlet(alpha), in closed form."""
    a0 = alpha.sum()
    mean = alpha / a0
    cov = (np.diag(mean) - np.outer(mean, mean)) / (a0 + 1)
    return cov + np.outer(mean, mean)


POS_ALPHA = np.array([8.0, 6.0, 1.0, 1.0])  # confident frames: mass on classes 0, 1
NEG_ALPHA = np.array([1.0, 1.0, 5.0, 7.0])  # failing frames: mass on classes 2, 3


def sample_vectors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(POS_ALPHA, n), rng.dirichlet(NEG_ALPHA, n)


def test_closed_form_satisfies_eq18() -> None:
    """dL/dU = (1-lam) M+ - lam M- + 2 gamma U vanishes at eq. 19 (with the sign eq. 18 implies)."""
    qp, qn = sample_vectors(200, 0)
    mp, mn = U.second_moment(qp), U.second_moment(qn)
    for lam, gamma in ((0.5, 1.0), (0.8, 0.3), (0.2, 2.0)):
        u = U.closed_form_u(qp, qn, lam, gamma)
        np.testing.assert_allclose(u, (lam * mn - (1 - lam) * mp) / (2 * gamma))
        residual = (1 - lam) * mp - lam * mn + 2 * gamma * u  # eq. 18 written out
        assert np.abs(residual).max() < 1e-12
        ut = torch.tensor(u, requires_grad=True)
        U.contrastive_loss(ut, torch.tensor(mp), torch.tensor(mn), lam, gamma).backward()
        assert ut.grad.abs().max() < 1e-12  # autograd of eq. 6 agrees


def test_fit_recovers_known_separating_matrix() -> None:
    """From samples, the fit approaches the population optimum and ranks every negative above every positive."""
    lam, gamma = 0.5, 1.0
    truth = (lam * dirichlet_moment(NEG_ALPHA) - (1 - lam) * dirichlet_moment(POS_ALPHA)) / (2 * gamma)
    qp, qn = sample_vectors(4000, 1)
    start = np.random.default_rng(2).normal(size=(4, 4))  # the optimiser, not the initialisation, must get there
    u, info = U.fit_u(U.second_moment(qp), U.second_moment(qn), lam, gamma, init=start)
    cosine = (u * truth).sum() / (np.linalg.norm(u) * np.linalg.norm(truth))
    assert cosine > 0.999
    np.testing.assert_allclose(u, truth, atol=5e-3)
    assert info["grad_norm"] < 1e-8
    test_p, test_n = sample_vectors(300, 3)
    assert U.score(test_n, u).min() > U.score(test_p, u).max()
    assert u[2:, 2:].sum() > 0 > u[:2, :2].sum()  # the separating structure: negatives' block up, positives' down


def test_kernel_term_moves_the_optimum_and_lowers_the_loss() -> None:
    qp, qn = sample_vectors(500, 4)
    mp, mn = U.second_moment(qp), U.second_moment(qn)
    spec = U.KernelSpec(sigma=1.0, dim=2, samples=64)
    bank = U.kernel_bank(4, spec)
    assert bank.shape == (64, 4, 4)
    assert torch.allclose(torch.diagonal(bank, dim1=1, dim2=2), torch.ones(64, 4, dtype=torch.float64))
    closed = U.closed_form_from_moments(mp, mn, 0.5, 1.0)
    u, info = U.fit_u(mp, mn, 0.5, 1.0, kernel=spec)
    assert np.isfinite(u).all() and info["loss"] <= info["loss_init"]
    assert not np.allclose(u, closed)
    q = math.exp(float(U.log_kernel_similarity(torch.tensor(u), bank)))
    assert 0.0 < q <= 1.0  # eq. 8 is a similarity in (0, 1]


def test_frame_stats_readings() -> None:
    """Eq. 5: with the printed 1/HW, q+ + q- = q; with per-set means, both are distributions."""
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 6, 8, generator=g).softmax(0)  # (C, H, W)
    label = probs.argmax(0).clone()
    label[:2] = (label[:2] + 1) % 4  # two rows wrong
    label[5, :3] = 255  # ignored pixels count nowhere
    st = U.frame_stats(probs, label, 255)
    assert st.n_neg == 16 and st.n_pos == 6 * 8 - 16 - 3
    qp, qn = st.vectors("pixels")
    valid = (label != 255).reshape(-1)
    np.testing.assert_allclose(qp + qn, probs.reshape(4, -1)[:, valid].double().mean(1).numpy(), atol=1e-12)
    sp, sn = st.vectors("set")
    assert abs(sp.sum() - 1) < 1e-6 and abs(sn.sum() - 1) < 1e-6
    with pytest.raises(ValueError):
        st.vectors("bogus")


def test_moments_need_both_sets() -> None:
    st = U.FrameStats(np.full(4, 0.25), np.full(4, 0.25), np.zeros(4), 10, 0)
    with pytest.raises(U.UncertaintyError, match="negative"):
        U.moments([st], "pixels")


def test_pixel_entropy_and_mask() -> None:
    """Eq. 11: uniform -> ln C, one-hot -> 0; eq. 12 by threshold or top-k% of pixels."""
    c = 5
    uniform = torch.full((1, c, 2, 2), 1.0 / c)
    onehot = torch.nn.functional.one_hot(torch.zeros(1, 2, 2, dtype=torch.long), c).permute(0, 3, 1, 2).float()
    assert torch.allclose(U.pixel_entropy(uniform), torch.full((1, 2, 2), math.log(c)))
    assert torch.allclose(U.pixel_entropy(onehot), torch.zeros(1, 2, 2), atol=1e-6)
    ent = torch.arange(100, dtype=torch.float32).reshape(10, 10)
    assert int(U.entropy_mask(ent, tau=89.5).sum()) == 10
    assert int(U.entropy_mask(ent, top_percent=20).sum()) == 20
    assert int(U.entropy_mask(ent, top_percent=0).sum()) == 0
    with pytest.raises(ValueError):
        U.entropy_mask(ent)


def test_upsampled_probs_argmax_matches_device_prediction() -> None:
    logits = torch.randn(1, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    p = U.upsampled_probs(logits, (20, 28))
    assert p.shape == (1, 3, 20, 28)
    assert torch.allclose(p.sum(1), torch.ones(1, 20, 28))
    from tandemseg.models.blocks import resize

    assert torch.equal(p.argmax(1), resize(logits, (20, 28)).argmax(1))


def test_score_is_eq9_and_batched() -> None:
    u = np.arange(16, dtype=float).reshape(4, 4)
    q = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    expected = [float(np.trace(np.outer(x, x) @ u.T)) for x in q]  # tr(q U q^T) with q a row: q U q^T
    np.testing.assert_allclose(U.score(q, u), expected)
    assert U.score(q[0], u).shape == ()


def test_file_round_trip_and_errors(tmp_path) -> None:
    u = np.random.default_rng(0).normal(size=(4, 4))
    um = U.UncertaintyMatrix(u, C4, {"lambda": 0.5, "kernel": None, "recipe": "tandemseg fit-uncertainty ..."})
    path = um.save(tmp_path / "u.safetensors")
    back = U.UncertaintyMatrix.load(path, expect_classes=C4)
    np.testing.assert_allclose(back.u, u, rtol=1e-6)
    assert back.meta["lambda"] == 0.5 and back.meta["kernel"] is None and back.version == 0
    with pytest.raises(U.UncertaintyError, match="fitted for 4 classes"):
        U.UncertaintyMatrix.load(path, expect_classes=CAMVID)
    with pytest.raises(U.UncertaintyError, match="not found"):
        U.UncertaintyMatrix.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(U.UncertaintyError, match="not a readable"):
        U.UncertaintyMatrix.load(bad)
    with pytest.raises(U.UncertaintyError, match="shape"):
        U.UncertaintyMatrix(np.zeros((3, 3)), C4)
    with pytest.raises(U.UncertaintyError, match="NaN"):
        U.UncertaintyMatrix(np.full((4, 4), np.nan), C4)


def test_replace_takes_only_newer_versions() -> None:
    um = U.UncertaintyMatrix(np.zeros((4, 4)), C4, version=2)
    assert not um.replace(np.ones((4, 4)), 2)
    assert um.replace(np.ones((4, 4)), 3) and um.version == 3 and um.u[0, 0] == 1
    with pytest.raises(U.UncertaintyError):
        um.replace(np.ones((3, 3)), 4)


def test_fit_from_stats_ranks_error_frames() -> None:
    """End to end on constructed frames: frames with more errors put mass on the classes the device confuses."""
    rng = np.random.default_rng(5)
    stats = []
    for _ in range(60):
        err = rng.uniform(0.0, 0.5)
        good, bad = rng.dirichlet(POS_ALPHA), rng.dirichlet(NEG_ALPHA)
        n = 1000
        stats.append(U.FrameStats((1 - err) * good + err * bad, (1 - err) * n * good, err * n * bad, int((1 - err) * n), int(err * n)))
    for reading in U.STATS_READINGS:
        um, diag = U.fit_from_stats(stats, C4, lam=0.5, gamma=1.0, stats=reading)
        assert diag["spearman"] > 0.75, reading
        assert um.meta["stats"] == reading and um.meta["fit"]["frames"] == 60


def test_lambda_auto_picks_from_the_grid_on_fit_frames() -> None:
    rng = np.random.default_rng(6)
    stats = []
    for _ in range(40):
        err = rng.uniform(0.0, 0.5)
        good, bad = rng.dirichlet(POS_ALPHA), rng.dirichlet(NEG_ALPHA)
        stats.append(U.FrameStats((1 - err) * good + err * bad, (1 - err) * 100 * good, err * 100 * bad, int((1 - err) * 100), int(err * 100)))
    um, diag = U.fit_from_stats(stats, C4, lam=None)
    search = diag["lambda_search"]
    assert um.meta["lambda"] in U.LAMBDA_GRID and search[str(um.meta["lambda"])] == max(search.values())


def test_entropy_weighted_feature() -> None:
    """feature='entropy': the eq. 5 sums and q(x) are of E * p; the policy scores q_E with such a U."""
    g = torch.Generator().manual_seed(2)
    probs = torch.rand(4, 6, 8, generator=g).mul(3).softmax(0)
    label = probs.argmax(0).clone()
    label[:3] = (label[:3] + 1) % 4
    st = U.frame_stats(probs, label, 255)
    ent = U.pixel_entropy(probs[None])[0].double()
    np.testing.assert_allclose(st.q_e, (probs.double() * ent).reshape(4, -1).mean(1).numpy(), atol=1e-12)
    qp, qn = st.vectors("pixels", "entropy")
    np.testing.assert_allclose(qp + qn, st.q_e, atol=1e-12)
    np.testing.assert_allclose(U.entropy_weighted_mean(probs[None])[0].double().numpy(), st.q_e, atol=1e-6)
    bare = U.FrameStats(st.q, st.s_pos, st.s_neg, st.n_pos, st.n_neg)
    with pytest.raises(U.UncertaintyError, match="entropy-weighted"):
        bare.vectors("pixels", "entropy")
    um, _ = U.fit_from_stats([st, st], C4, 0.5, feature="entropy")
    assert um.feature == "entropy"
    from tandemseg.device.policies import FrameObservation, make_policy

    obs = FrameObservation(0, probs)
    np.testing.assert_allclose(obs.q_entropy, st.q_e, atol=1e-6)
    assert make_policy("acdc", um).score(obs) == pytest.approx(float(U.score(obs.q_entropy, um.u)))


def test_pixel_feature_sees_hesitation_that_the_average_hides() -> None:
    """Two frames with the same q(x): one of confident pixels, one of pixels split between classes 2 and 3.
    Eq. 9 on q cannot tell them apart; feature 'pixel' (eq. 9 per pixel, averaged) ranks the hesitant one higher
    once U is fitted on frames where the device's wrong pixels are the hesitant ones."""
    confident = torch.zeros(4, 4, 4, dtype=torch.float64)
    confident[2, :2] = 1.0  # half the pixels surely class 2, half surely class 3
    confident[3, 2:] = 1.0
    hesitant = torch.zeros(4, 4, 4, dtype=torch.float64)
    hesitant[2], hesitant[3] = 0.5, 0.5
    np.testing.assert_allclose(U.mean_probs(confident[None]), U.mean_probs(hesitant[None]))
    # fit frames: confident pixels are right, hesitant ones wrong
    label_right = confident.argmax(0)
    label_wrong = (hesitant.argmax(0) + 1) % 4  # hesitant argmax is class 2; label it 3 -> every pixel wrong
    fit = [U.frame_stats(confident, label_right, 255), U.frame_stats(hesitant, label_wrong, 255)] * 3
    um, diag = U.fit_from_stats(fit, C4, lam=0.5, feature="pixel")
    assert um.feature == "pixel"
    from tandemseg.device.policies import FrameObservation, make_policy

    policy = make_policy("acdc", um)
    assert policy.score(FrameObservation(1, hesitant.float())) > policy.score(FrameObservation(0, confident.float()))
    q = U.mean_probs(confident[None])[0].numpy()
    assert U.score(q, um.u) == pytest.approx(U.score(U.mean_probs(hesitant[None])[0].numpy(), um.u))  # eq. 9 on q: a tie


def test_pixel_moments_are_the_masked_sums_of_p_p_transpose(tmp_path) -> None:
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(4, 5, 7, generator=g).mul(3).softmax(0)
    label = torch.randint(0, 4, (5, 7), generator=g)
    label[0] = 255
    st = U.frame_stats(probs, label, 255)
    p = probs.reshape(4, -1).double().numpy()  # (C, N)
    lab = label.reshape(-1).numpy()
    valid = lab != 255
    correct = valid & (p.argmax(0) == lab)
    wrong = valid & ~correct
    np.testing.assert_allclose(st.pp_pos, p[:, correct] @ p[:, correct].T, atol=1e-12)
    np.testing.assert_allclose(st.pp_neg, p[:, wrong] @ p[:, wrong].T, atol=1e-12)
    np.testing.assert_allclose(st.pp, p @ p.T / p.shape[1], atol=1e-12)
    m_pos, m_neg = U.moments([st, st], "pixels", "pixel")
    np.testing.assert_allclose(m_pos, st.pp_pos / st.n_pos, atol=1e-12)
    np.testing.assert_allclose(m_neg, st.pp_neg / st.n_neg, atol=1e-12)
    U.save_stats(tmp_path / "s.npz", [st])
    back = U.load_stats(tmp_path / "s.npz")[0]
    np.testing.assert_allclose(back.pp_neg, st.pp_neg)
    with pytest.raises(U.UncertaintyError, match="pixel second moments"):
        U.FrameStats(st.q, st.s_pos, st.s_neg, st.n_pos, st.n_neg).score_vector("pixel")


def test_frame_stats_options_leave_out_only_what_they_name() -> None:
    """DCAM asks the shared frame_stats for the probability sums only; what it gets equals the full statistics."""
    g = torch.Generator().manual_seed(4)
    probs = torch.rand(4, 6, 5, generator=g).mul(3).softmax(0)
    label = torch.randint(0, 4, (6, 5), generator=g)
    full = U.frame_stats(probs, label, 255)
    lean = U.frame_stats(probs, label.numpy(), 255, pred=probs.argmax(0).numpy(), entropy=False, pixel_moments=False)
    assert lean.q_e is None and lean.s_pos_e is None and lean.pp is None and lean.pp_pos is None
    assert (lean.n_pos, lean.n_neg) == (full.n_pos, full.n_neg)
    for a, b in ((lean.q, full.q), (lean.s_pos, full.s_pos), (lean.s_neg, full.s_neg)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(U.UncertaintyError, match="pixel second moments"):
        lean.pixel_sums()
