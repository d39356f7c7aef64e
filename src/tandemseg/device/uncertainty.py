"""The ACDC uncertainty decoupler (paper 000, sec. 3.2.1, appendix A.4.1): sample-level score u(x) = q U q^T
from a learned C x C matrix U, and pixel-level entropy with its uncertain-region mask.

Readings of the garbled equations (argued in docs/methods/offloading.md):

* eq. 5: each frame x gives a positive and a negative vector from the pixels the device got right and
  wrong: s+(x) = sum_{y_hat = y} p, s-(x) = sum_{y_hat != y} p (ignored pixels excluded). `stats="pixels"`
  divides both by all valid pixels (the printed 1/HW, so q+ + q- = q(x)); `stats="set"` divides each by its
  own pixel count (q+ = mean prediction on correct pixels, q- on wrong ones, both on the simplex).
* eq. 6-7 with E[S_U(x)] = Q(U) tr(U E[q q^T]): the loss only needs the second moments M+ = E+[q q^T],
  M- = E-[q q^T].
* eq. 18-19: with Omega(U) = ||U||_F^2 the stationary point is U = (lam M- - (1 - lam) M+) / (2 gamma). The
  printed eq. 19 has the opposite sign, which would *minimise* the negatives' score; we use the sign
  that follows from eq. 18.
* eq. 8: K_sigma(z) is the Gaussian-kernel (RBF) Gram matrix of C random points z_i ~ N(0, I_d):
  K_ij = exp(-||z_i - z_j||^2 / (2 sigma^2)); Q(U) is a Monte-Carlo mean over a fixed bank of such z.
* eq. 9: u(x; U) = tr(q U q^T) with q a row vector is the scalar q U q^T.

Because q(x) is a pixel average, eq. 9 sees only a frame's class *composition*: a frame of confident
pixels and one of hesitant pixels with the same average get the same score. Feature "pixel" (our
extension, measured as an ablation in docs/results/offloading.md) applies eq. 9 per pixel and averages,
u(x) = mean_i p_i U p_i^T = <U, S(x)> with S(x) = mean_i p_i p_i^T, and fits U with the same closed form
from pixel-level moments M+ = E_{correct pixels}[p p^T], M- = E_{wrong pixels}[p p^T]. With U = J - I
it is the Gini impurity 1 - sum_c p_c^2, a cousin of entropy; the fitted U learns which confusions matter.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from tandemseg.data.classes import ClassTable
from tandemseg.data.tensors import to_tensor
from tandemseg.jsonio import json_safe
from tandemseg.models.blocks import resize
from tandemseg.uncertainty_stats import (  # eq. 5 statistics and eq. 19, shared with DCAM (cloud/dcam.py)
    FEATURES,
    STATS_READINGS,
    FrameStats,
    UncertaintyError,
    check_lam_gamma,
    closed_form_from_moments,
    frame_stats,
    pixel_entropy,
    rescale_like,
    second_moment,
)

FILE_FORMAT = "tandemseg-uncertainty"
FILE_VERSION = 1


# ----------------------------------------------------------------------------- pixel level (eq. 11-12)


def softmax_probs(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities over dim 1 (N, C, h, w)."""
    return logits.float().softmax(1)


def mean_probs(probs: torch.Tensor) -> torch.Tensor:
    """q(x): pixel-averaged class probabilities, (N, C, h, w) -> (N, C) (the input of eq. 9)."""
    return probs.flatten(2).mean(2)


def entropy_weighted_mean(probs: torch.Tensor) -> torch.Tensor:
    """q_E(x): pixel average of E * p, (N, C, h, w) -> (N, C): how much uncertain mass each class carries."""
    return (probs * pixel_entropy(probs)[:, None]).flatten(2).mean(2)


def entropy_threshold(entropy: torch.Tensor, tau: float | None = None, top_percent: float | None = None) -> float:
    """The tau of eq. 12: given directly, or so that the `top_percent` % most uncertain pixels exceed it."""
    if (tau is None) == (top_percent is None):
        raise ValueError("give exactly one of tau (nats) or top_percent (0..100)")
    if tau is not None:
        return float(tau)
    if not 0.0 <= top_percent <= 100.0:
        raise ValueError(f"top_percent must be in 0..100, got {top_percent}")
    if top_percent == 0.0:
        return float("inf")
    return float(torch.quantile(entropy.flatten().float(), 1.0 - top_percent / 100.0))


def entropy_mask(entropy: torch.Tensor, tau: float | None = None, top_percent: float | None = None) -> torch.Tensor:
    """Eq. 12: M = 1[E > tau] (bool, same shape as `entropy`)."""
    return entropy > entropy_threshold(entropy, tau, top_percent)


# ----------------------------------------------------------------------------- eq. 5 statistics


def pixel_second_moment(probs: torch.Tensor) -> np.ndarray:
    """S(x) = mean over pixels of p p^T for (C, h, w) -> (C, C): the input of the per-pixel score (feature "pixel")."""
    flat = probs.reshape(probs.shape[0], -1).double()  # (C, hw)
    return (flat @ flat.T).div_(flat.shape[1]).numpy()


def moments(stats_list: list[FrameStats], stats: str, feature: str = "probs") -> tuple[np.ndarray, np.ndarray]:
    """(M+, M-) = (E+[q q^T], E-[q q^T]) over frames, under the chosen eq. 5 reading.

    Feature "pixel": the pooled pixel moments E_{correct}[p p^T], E_{wrong}[p p^T] over all frames' pixels
    (the 'stats' reading does not apply: the per-pixel score has no frame-level vectors).
    """
    if feature == "pixel":
        return _pixel_moments(stats_list)
    pos, neg = [], []
    for s in stats_list:
        qp, qn = s.vectors(stats, feature)
        if qp is not None:
            pos.append(qp)
        if qn is not None:
            neg.append(qn)
    if not pos or not neg:
        raise UncertaintyError(
            f"the fit data gives {len(pos)} positive and {len(neg)} negative vectors; both are needed. "
            "Fit on more frames or on shifted frames where the device makes mistakes (--shifts)."
        )
    return second_moment(np.stack(pos)), second_moment(np.stack(neg))


def _pixel_moments(stats_list: list[FrameStats]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [s.pixel_sums() for s in stats_list]
    n_pos, n_neg = sum(s.n_pos for s in stats_list), sum(s.n_neg for s in stats_list)
    if not n_pos or not n_neg:
        raise UncertaintyError(
            f"the fit data has {n_pos} correct and {n_neg} wrong pixels; both are needed. "
            "Fit on more frames or on shifted frames where the device makes mistakes (--shifts)."
        )
    return sum(p for p, _ in pairs) / n_pos, sum(n for _, n in pairs) / n_neg


# ----------------------------------------------------------------------------- U: closed form and fit (eq. 6-8, 18-19)


def closed_form_u(q_pos: np.ndarray, q_neg: np.ndarray, lam: float = 0.5, gamma: float = 1.0) -> np.ndarray:
    """Eq. 19 from positive/negative vectors (N+, C), (N-, C) -> U (C, C)."""
    return closed_form_from_moments(second_moment(q_pos), second_moment(q_neg), lam, gamma)


@dataclass(frozen=True)
class KernelSpec:
    """The Gaussian-kernel term of eq. 7-8: `samples` random Gram matrices of C points z_i ~ N(0, I_dim)."""

    sigma: float = 1.0
    dim: int = 2
    samples: int = 256
    seed: int = 0

    def to_json(self) -> dict:
        return {"sigma": self.sigma, "dim": self.dim, "samples": self.samples, "seed": self.seed}


def kernel_bank(num_classes: int, spec: KernelSpec) -> torch.Tensor:
    """K_sigma(z) for `spec.samples` draws of z (C, dim): RBF Gram matrices (S, C, C), fixed by the seed."""
    g = torch.Generator().manual_seed(spec.seed)
    z = torch.randn(spec.samples, num_classes, spec.dim, generator=g, dtype=torch.float64)  # (S, C, d)
    d2 = torch.cdist(z, z).pow(2)  # (S, C, C)
    return torch.exp(-d2 / (2.0 * spec.sigma**2))


def log_kernel_similarity(u: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """log Q(U) of eq. 8: log mean_s exp(-1/2 ||K_s - U||_F^2), via logsumexp (Q underflows otherwise)."""
    d = -0.5 * (bank - u).pow(2).sum((-2, -1))  # (S,)
    return torch.logsumexp(d, 0) - math.log(bank.shape[0])


def contrastive_loss(
    u: torch.Tensor, m_pos: torch.Tensor, m_neg: torch.Tensor, lam: float, gamma: float, bank: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 6 with eq. 7 in moment form: Q(U) [(1-lam) tr(U M+) - lam tr(U M-)] + gamma ||U||_F^2 (Q = 1 without kernel)."""
    contrast = (1.0 - lam) * (u * m_pos).sum() - lam * (u * m_neg).sum()  # tr(U M) = sum(U * M) for symmetric M
    if bank is not None:
        contrast = torch.exp(log_kernel_similarity(u, bank)) * contrast
    return contrast + gamma * u.pow(2).sum()


def fit_u(
    m_pos: np.ndarray, m_neg: np.ndarray, lam: float = 0.5, gamma: float = 1.0, kernel: KernelSpec | None = None,
    init: np.ndarray | None = None, steps: int = 200,
) -> tuple[np.ndarray, dict]:
    """Minimise eq. 6 over symmetric U with L-BFGS, from the closed form of eq. 19 (or `init`).

    Without the kernel term eq. 6 is a strictly convex quadratic whose minimiser *is* eq. 19, so the
    optimiser stops at once; with it, Q(U) couples U to the kernel matrices and the optimum moves.
    Returns (U, info) with the loss before/after and the gradient norm at the end.
    """
    check_lam_gamma(lam, gamma)
    mp = torch.as_tensor(m_pos, dtype=torch.float64)
    mn = torch.as_tensor(m_neg, dtype=torch.float64)
    bank = kernel_bank(mp.shape[0], kernel) if kernel is not None else None
    start = closed_form_from_moments(m_pos, m_neg, lam, gamma) if init is None else np.asarray(init, np.float64)
    a = torch.tensor(start, dtype=torch.float64, requires_grad=True)

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(0.5 * (x + x.T), mp, mn, lam, gamma, bank)  # symmetric: q U q^T sees only (U + U^T)/2

    opt = torch.optim.LBFGS([a], lr=1.0, max_iter=steps, tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe")
    loss0 = float(loss_of(a).detach())

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_of(a)
        loss.backward()
        return loss

    opt.step(closure)
    u = 0.5 * (a + a.T)
    u_final = u.detach()
    grad = torch.autograd.functional.jacobian(lambda x: loss_of(x), u_final)
    info = {"loss_init": loss0, "loss": float(loss_of(u_final)), "grad_norm": float(grad.norm())}
    return u_final.numpy(), info


# ----------------------------------------------------------------------------- the score (eq. 9) and the file


def score(q: np.ndarray | torch.Tensor, u: np.ndarray | torch.Tensor) -> np.ndarray:
    """Eq. 9: u(x) = q U q^T for each row of q (N, C) -> (N,) (or a scalar array for q (C,))."""
    q = torch.as_tensor(q, dtype=torch.float64)
    u = torch.as_tensor(u, dtype=torch.float64)
    return torch.einsum("...i,ij,...j->...", q, u, q).numpy()


def score_feature(x: np.ndarray | torch.Tensor, u: np.ndarray | torch.Tensor, feature: str) -> np.ndarray:
    """u(x) for a U of the given feature: eq. 9 on q (N, C) / (C,), or <U, S(x)> on S (N, C, C) / (C, C) for "pixel"."""
    if feature != "pixel":
        return score(x, u)
    x = torch.as_tensor(x, dtype=torch.float64)
    u = torch.as_tensor(u, dtype=torch.float64)
    return (x * u).sum((-2, -1)).numpy()  # mean_i p_i U p_i^T = <U, mean_i p_i p_i^T>


@dataclass
class UncertaintyMatrix:
    """U with its provenance. `version` counts DCAM updates (0 = as fitted); the runtime replaces U on a newer reply."""

    u: np.ndarray  # (C, C) float64
    classes: ClassTable
    meta: dict = field(default_factory=dict)
    version: int = 0

    def __post_init__(self) -> None:
        self.u = np.asarray(self.u, dtype=np.float64)
        c = self.classes.num_classes
        if self.u.shape != (c, c):
            raise UncertaintyError(f"U has shape {self.u.shape} but the class table has {c} classes; it must be ({c}, {c})")
        if not np.isfinite(self.u).all():
            raise UncertaintyError("U holds NaN or inf values; refit it with `tandemseg fit-uncertainty`")

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    @property
    def feature(self) -> str:
        """What the score reads: 'probs' (eq. 9 as printed: q), 'entropy' (q of E * p) or 'pixel' (S(x))."""
        return self.meta.get("feature", "probs")

    def score(self, q: np.ndarray | torch.Tensor) -> np.ndarray:
        """Eq. 9 for a batch of q (N, C) or one q (C,); for feature 'pixel', S (N, C, C) or (C, C)."""
        return score_feature(q, self.u, self.feature)

    def replace(self, u: np.ndarray, version: int) -> bool:
        """Take a newer U (DCAM reply); ignore stale versions. Returns whether U changed."""
        if version <= self.version:
            return False
        u = np.asarray(u, dtype=np.float64)
        if u.shape != self.u.shape or not np.isfinite(u).all():
            raise UncertaintyError(f"a U update of shape {u.shape} (finite: {bool(np.isfinite(u).all())}) cannot replace U {self.u.shape}")
        self.u, self.version = u, int(version)
        return True

    def save(self, path: str | Path) -> Path:
        """safetensors with tensor `U` (C, C) float32 and string metadata (classes, fit settings, provenance)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FILE_FORMAT,
            "format_version": str(FILE_VERSION),
            "classes": json.dumps(self.classes.to_json()),
            "version": str(self.version),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **{k: (v if isinstance(v, str) else json.dumps(json_safe(v))) for k, v in self.meta.items()},
        }
        u32 = np.ascontiguousarray(self.u, dtype="<f4")
        meta["sha256"] = hashlib.sha256(u32.tobytes()).hexdigest()  # safetensors has no checksum: a flipped bit must not load
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file({"U": u32}, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, expect_classes: ClassTable | None = None) -> UncertaintyMatrix:
        """Read a file written by `save`; fails with a one-line reason on a missing/corrupt file or a class mismatch."""
        path = Path(path)
        if not path.is_file():
            raise UncertaintyError(f"uncertainty matrix not found: {path}. Fit one with `tandemseg fit-uncertainty --ckpt DEVICE --out {path}`")
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                meta = dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise UncertaintyError(f"{path} is not a readable safetensors file ({e}); refit it with `tandemseg fit-uncertainty`") from None
        if meta.get("format") != FILE_FORMAT or "U" not in tensors:
            raise UncertaintyError(f"{path} is not a tandemseg uncertainty matrix (no tensor 'U' / format tag); was it written by `tandemseg fit-uncertainty`?")
        try:
            classes = ClassTable.from_json(json.loads(meta.pop("classes")))
        except (KeyError, ValueError, TypeError) as e:
            raise UncertaintyError(f"{path}: its class table is missing or malformed ({e})") from None
        if expect_classes is not None and tuple(classes.names) != tuple(expect_classes.names):
            raise UncertaintyError(
                f"{path} was fitted for {classes.num_classes} classes {list(classes.names)[:3]}... but the model predicts "
                f"{expect_classes.num_classes} classes {list(expect_classes.names)[:3]}...; fit U for this device model"
            )
        digest = meta.pop("sha256", None)
        if digest is not None and hashlib.sha256(np.ascontiguousarray(tensors["U"], dtype="<f4").tobytes()).hexdigest() != digest:
            raise UncertaintyError(f"{path}: U does not match the sha256 saved with it (damaged or altered); refit it with `tandemseg fit-uncertainty`")
        version = int(meta.pop("version", "0"))
        for k in ("format", "format_version", "created"):
            meta.pop(k, None)
        parsed = {k: _maybe_json(v) for k, v in meta.items()}
        return cls(tensors["U"].astype(np.float64), classes, parsed, version)


def _maybe_json(text: str):
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def upsampled_probs(coarse_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """p' of eq. 11: coarse logits (N, C, h, w) upsampled as the device model does (eq. 4), then softmax -> (N, C, H, W).

    Upsampling the logits (not the probabilities) keeps argmax p' equal to the device's own prediction.
    """
    return resize(coarse_logits.float(), size).softmax(1)


# ----------------------------------------------------------------------------- fitting U on a device model's outputs


@torch.inference_mode()
def model_frame_stats(model: torch.nn.Module, image: np.ndarray, label: np.ndarray, ignore_index: int) -> FrameStats:
    """Eq. 5 sums of one labelled frame: correctness at full resolution (the device's real prediction),
    q(x) from the coarse map (what the runtime scores)."""
    logits = model.forward_coarse(to_tensor([image]))  # (1, C, h, w)
    full = upsampled_probs(logits, label.shape)[0]  # (C, H, W)
    st = frame_stats(full, label, ignore_index)
    coarse = logits.float().softmax(1)  # (1, C, h, w)
    st.q = mean_probs(coarse)[0].double().numpy()
    st.q_e = entropy_weighted_mean(coarse)[0].double().numpy()
    st.pp = pixel_second_moment(coarse[0])
    return st


def score_diagnostics(scores: np.ndarray, errors: np.ndarray) -> dict:
    """How well scores rank frames by device error rate: Spearman rho, and AUROC for the worst quarter."""
    from scipy.stats import rankdata, spearmanr

    scores, errors = np.asarray(scores, float), np.asarray(errors, float)
    if len(scores) < 4 or np.ptp(scores) == 0 or np.ptp(errors) == 0:
        return {"spearman": None, "auroc_worst_quarter": None}
    rho = float(spearmanr(scores, errors).statistic)
    hard = errors >= np.quantile(errors, 0.75)
    ranks = rankdata(scores)
    n1, n0 = int(hard.sum()), int((~hard).sum())
    auroc = (ranks[hard].sum() - n1 * (n1 + 1) / 2) / (n1 * n0) if n1 and n0 else None
    return {"spearman": rho, "auroc_worst_quarter": None if auroc is None else float(auroc)}


LAMBDA_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def fit_from_stats(
    stats_list: list[FrameStats], classes: ClassTable, lam: float | None = 0.5, gamma: float = 1.0, stats: str = "pixels",
    kernel: KernelSpec | None = None, meta: dict | None = None, feature: str = "probs",
) -> tuple[UncertaintyMatrix, dict]:
    """U from eq. 5 statistics: closed form (eq. 19), refined by eq. 6-8 when the kernel term is on.

    `lam=None` picks lambda from LAMBDA_GRID by the Spearman correlation between u(x) and the device's
    error rate on the fit (calibration) frames themselves, so no evaluation data is involved.
    The stored U is rescaled to the closed form's Frobenius norm (see `rescale_like`).
    Returns the matrix and diagnostics (loss, gradient norm, ranking quality on the fit frames).
    """
    if stats not in STATS_READINGS:
        raise UncertaintyError(f"unknown --stats reading {stats!r}; valid: {', '.join(STATS_READINGS)}")
    if feature not in FEATURES:
        raise UncertaintyError(f"unknown --feature {feature!r}; valid: {', '.join(FEATURES)}")
    if lam is None:
        grid = {g: fit_from_stats(stats_list, classes, g, gamma, stats, kernel, None, feature)[1]["spearman"] or -1.0 for g in LAMBDA_GRID}
        best = max(grid, key=grid.get)
        um, diag = fit_from_stats(stats_list, classes, best, gamma, stats, kernel, meta, feature)
        diag["lambda_search"] = {str(k): v for k, v in grid.items()}
        um.meta["lambda_search"] = diag["lambda_search"]
        return um, diag
    m_pos, m_neg = moments(stats_list, stats, feature)
    closed = closed_form_from_moments(m_pos, m_neg, lam, gamma)
    u, info = fit_u(m_pos, m_neg, lam, gamma, kernel)
    u = rescale_like(u, closed)
    q = np.stack([s.score_vector(feature) for s in stats_list])
    errs = np.array([s.error_rate for s in stats_list])
    ent = [s.mean_entropy for s in stats_list]
    diag = {
        **info, "frames": len(stats_list), "mean_error_rate": float(errs.mean()),
        "cosine_to_closed_form": float((u * closed).sum() / max(np.linalg.norm(u) * np.linalg.norm(closed), 1e-300)),
        **score_diagnostics(score_feature(q, u, feature), errs),
        # the `entropy` policy's ranking of the same frames: the bar a fitted U has to clear
        "entropy_baseline": score_diagnostics(np.array(ent), errs) if None not in ent else None,
    }
    settings = {"lambda": lam, "gamma": gamma, "stats": stats, "feature": feature, "kernel": None if kernel is None else kernel.to_json()}
    return UncertaintyMatrix(u, classes, {**settings, **(meta or {}), "fit": diag}), diag


def save_stats(path: str | Path, stats_list: list[FrameStats]) -> None:
    """Cache eq. 5 sums per frame (the slow part of a fit), so lambda/gamma/kernel ablations refit in ms."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, q=np.stack([s.q for s in stats_list]), s_pos=np.stack([s.s_pos for s in stats_list]),
             s_neg=np.stack([s.s_neg for s in stats_list]), n=np.array([[s.n_pos, s.n_neg] for s in stats_list]),
             q_e=np.stack([s.q_e for s in stats_list]), s_pos_e=np.stack([s.s_pos_e for s in stats_list]),
             s_neg_e=np.stack([s.s_neg_e for s in stats_list]), pp=np.stack([s.pp for s in stats_list]),
             pp_pos=np.stack([s.pp_pos for s in stats_list]), pp_neg=np.stack([s.pp_neg for s in stats_list]))


def load_stats(path: str | Path) -> list[FrameStats]:
    z = np.load(path)
    rows = zip(z["q"], z["s_pos"], z["s_neg"], z["n"], z["q_e"], z["s_pos_e"], z["s_neg_e"], z["pp"], z["pp_pos"], z["pp_neg"], strict=True)
    return [FrameStats(q, sp, sn, int(n[0]), int(n[1]), qe, spe, sne, pp, ppp, ppn) for q, sp, sn, n, qe, spe, sne, pp, ppp, ppn in rows]
