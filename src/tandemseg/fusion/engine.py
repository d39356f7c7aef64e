"""CollaborativeFusion: the device-side stage between the device's coarse map, the cloud's fine one and the
final label map (ACDC sec. 3.2.3).

    mask     eq. 11-12: pixel entropy of the coarse prediction at the working grid; the top `top_percent` %
    refine   eq. 15: M_u recomputes the masked pixels from the coarse probabilities and the frame (fusion/refiners.py)
    fuse     dual granularity: the refined coarse map and the cloud's fine probabilities, concatenated, mixed by a
             few light convolutions into a correction of the cloud's log-probabilities; without a cloud map the
             refined map is the answer (the same module, `cloud_probs=None`)

Readings (docs/methods/fusion.md): refinement runs on a grid at `work_scale` of the frame (1/2: the device's
own input grid, ACDC eq. 4), and each site stands for the s x s frame pixels around it (s = `subpixel`): it reads
their colours and corrects each one's logits, so the refinement is at the frame's resolution. A sparse or point
refiner corrects the pixels of masked sites only (a submanifold network has no other outputs); every other pixel
keeps the device's own upsampled logits, so with an empty mask the device's map comes back unchanged. The
entropy of eq. 11 is computed on the coarse grid and interpolated to the working grid (the entropy of
interpolated probabilities would need a softmax and an entropy at 16x the sites).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tandemseg.fusion.config import FusionConfig
from tandemseg.fusion.refiners import DenseRefiner, flat_index, make_refiner, tap_index

CLOUD_FLOOR = 1.0 / 32  # the cloud's probabilities arrive at 4 bits (wire/payload.py): half a step stands in for 0


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of `n_out` positions resampling `n_in` by nearest neighbour: floor(i * n_in / n_out)."""
    return (np.arange(n_out) * n_in) // n_out


def nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) -> (..., H, W) by nearest neighbour, with the integer indices the numpy label path uses too."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    rows = torch.from_numpy(nearest_index(x.shape[-2], size[0]))
    cols = torch.from_numpy(nearest_index(x.shape[-1], size[1]))
    return x.index_select(-2, rows).index_select(-1, cols)


def pixel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Eq. 11: E = -sum_c p_c log p_c, (B, C, h, w) -> (B, 1, h, w)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(1, keepdim=True)


def uncertain_mask(coarse_entropy: torch.Tensor, size: tuple[int, int], top_percent: float) -> torch.Tensor:
    """Eq. 12 per frame, M = 1[E > tau], on the working grid: E is the coarse grid's entropy (B, 1, h, w) interpolated
    to `size`, tau the (1 - top_percent / 100) quantile of the coarse grid's entropy, so about `top_percent` % of the
    pixels are uncertain on every frame (M_u's cost stays flat) -> (B, h', w') bool."""
    b = coarse_entropy.shape[0]
    if top_percent <= 0.0:
        return torch.zeros(b, *size, dtype=torch.bool)
    flat = coarse_entropy.reshape(b, -1)  # (B, h*w)
    tau = torch.quantile(flat, 1.0 - top_percent / 100.0, dim=1)  # (B,)
    return resize(coarse_entropy, size)[:, 0] > tau[:, None, None]


class DualFusion(nn.Module):
    """The refined coarse map and the cloud's fine probabilities -> a correction of the cloud's log-probabilities
    (zero-initialised: an untrained fusion shows the cloud's map)."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        c, k = cfg.num_classes, cfg.hidden
        self.mix = nn.Sequential(nn.Conv2d(2 * c, k, 1), nn.ReLU(), nn.Conv2d(k, k, 3, padding=1, groups=k), nn.ReLU(), nn.Conv2d(k, c, 1))
        nn.init.zeros_(self.mix[-1].weight)
        nn.init.zeros_(self.mix[-1].bias)

    def forward(self, refined: torch.Tensor, cloud_probs: torch.Tensor) -> torch.Tensor:
        """refined (B, C, h, w) logits, cloud_probs (B, C, h, w) -> (B, C, h, w) correction."""
        return self.mix(torch.cat([refined.softmax(1), cloud_probs], 1))


class CollaborativeFusion(nn.Module):
    """CFE = mask -> M_u -> fusion. Inputs are batched; `forward` gives logits, `local_label` the fast label path."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.refine = make_refiner(cfg)
        self.fuse = DualFusion(cfg)
        self._luts: dict[tuple[int, ...], torch.Tensor] = {}  # frame size -> pixel lookup of the label path

    @property
    def dense(self) -> bool:
        return isinstance(self.refine, DenseRefiner)

    def work_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return max(1, round(size[0] * self.cfg.work_scale)), max(1, round(size[1] * self.cfg.work_scale))

    def refined(self, coarse_probs: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """coarse_probs (B, C, h, w), image (B, 3, H, W) in [0, 1] -> (coarse log-probs on the working grid
        (B, C, h', w'), M_u's sub-pixel correction (B, C s^2, h', w'), the eq. 12 mask (B, h', w'))."""
        size, s = self.work_size(image.shape[-2:]), self.cfg.subpixel
        base = resize(coarse_probs.clamp_min(1e-12).log(), size)  # log-probs upsample like logits (eq. 4)
        rgb = F.pixel_unshuffle(nearest(image, (size[0] * s, size[1] * s)), s)  # (B, 3 s^2, h', w'): each site's pixels
        mask = uncertain_mask(pixel_entropy(coarse_probs), size, self.cfg.top_percent)  # (B, h', w')
        return base, self.refine(base, rgb, mask), mask

    def forward(self, coarse_probs: torch.Tensor, image: torch.Tensor, cloud_probs: torch.Tensor | None = None) -> torch.Tensor:
        """-> (B, C, H, W) logits at the frame's size; cloud_probs (B, C, hc, wc) from the reply, or None (a frame the
        cloud never saw: the refined coarse map)."""
        size = tuple(image.shape[-2:])
        base, delta, _ = self.refined(coarse_probs, image)
        if cloud_probs is None:
            return self._local(coarse_probs, delta, size)
        return self._fused(base, delta, cloud_probs, size)

    def both(self, coarse_probs: torch.Tensor, image: torch.Tensor, cloud_probs: torch.Tensor,
             detach: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(refined map without the cloud, fused map with it, (B, H, W) bool: the pixels the refinement may change),
        sharing one refinement. `detach`: the fused map's gradient stops at the refinement (training: M_u learns from
        the refined map alone, the fusion on top of it)."""
        size = tuple(image.shape[-2:])
        base, delta, mask = self.refined(coarse_probs, image)
        changed = torch.ones(mask.shape[0], *size, dtype=torch.bool) if self.dense else nearest(mask[:, None].float(), size)[:, 0].bool()
        fused = self._fused(base, delta.detach() if detach else delta, cloud_probs, size)
        return self._local(coarse_probs, delta, size), fused, changed

    @torch.inference_mode()
    def local_label(self, coarse_probs: torch.Tensor, image: np.ndarray, device_pred: np.ndarray) -> np.ndarray:
        """`forward(coarse_probs, image)[0].argmax(0)` for one frame, fast: coarse_probs (1, C, h, w), image (H, W, 3)
        uint8, device_pred (H, W) the device's own map -> (H, W) uint8. A sparse or point refiner computes the
        masked sites only, and only the frame pixels they stand for get new labels; nothing else runs at full size."""
        h, w = device_pred.shape
        if self.dense:
            frame = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255.0)  # (1, 3, H, W)
            return self(coarse_probs, frame).max(1).indices[0].to(torch.uint8).numpy()
        (hw, ww), s, c = self.work_size((h, w)), self.cfg.subpixel, coarse_probs.shape[1]
        # the device's outputs come channels-last (its convolutions' layout): every gather below wants rows of pixels
        coarse_probs = coarse_probs.contiguous()
        logp = coarse_probs.clamp_min(1e-12).log()  # (1, C, h, w)
        base = resize(logp, (hw, ww)).contiguous()  # (1, C, h', w')
        mask = uncertain_mask(pixel_entropy(coarse_probs), (hw, ww), self.cfg.top_percent)  # (1, h', w')
        index = flat_index(mask)  # (N,)
        if index.numel() == 0:
            return device_pred.astype(np.uint8)
        delta = self.refine.at_sites(base, None, index, self._first_taps(base, image, index))  # (N, C s^2)
        ys, xs, rows, subs = site_pixels(index.numpy(), (hw, ww), (h, w), s)  # the frame pixels the sites stand for
        correction = delta.reshape(-1, c, s * s)[torch.from_numpy(rows), :, torch.from_numpy(subs)]  # (P, C)
        labels = (bilinear_at(logp, ys, xs, (h, w)) + correction).max(1).indices.to(torch.uint8).numpy()  # (P,)
        out = device_pred.astype(np.uint8, copy=True)
        out[ys, xs] = labels
        return out

    def _first_taps(self, base: torch.Tensor, image: np.ndarray, index: torch.Tensor) -> torch.Tensor:
        """The first layer's input columns at one frame's sites: coarse probabilities from `base` (1, C, h', w') and the
        colours of each tap's s x s frame pixels straight from the uint8 frame, exactly what `refined` gathers."""
        (h, w), (hw, ww), k, s = image.shape[:2], base.shape[-2:], self.refine.kernel, self.cfg.subpixel
        taps = tap_index(index, (1, hw, ww), k).reshape(-1)  # (N*k*k,) sites on the working grid
        probs = base[0].reshape(base.shape[1], -1).index_select(1, taps).T.softmax(1)  # (N*k*k, C), per tap as on the map
        lut = self._pixel_lut((h, w), (hw, ww))  # (h'*w', s^2) frame pixel of each site's sub-pixels
        pixels = torch.from_numpy(np.require(image, requirements=["C", "W"]).reshape(-1, 3))  # (H*W, 3); copied only if read-only
        rgb = pixels.index_select(0, lut[taps].reshape(-1))  # (N*k*k*s^2, 3) uint8
        rgb = rgb.reshape(-1, s * s, 3).transpose(1, 2).reshape(taps.numel(), -1).float().div(255.0)  # (N*k*k, 3 s^2)
        return torch.cat([probs, rgb], 1).reshape(index.numel(), -1)  # (N, k*k*(C+3s^2))

    def _pixel_lut(self, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
        """(h'*w', s^2): the frame pixel (flat) each site's sub-pixels read, as `nearest` + `pixel_unshuffle` pick them.
        Kept per frame size (at most 4 sizes): a device streams one size, and building it is a third of the cost."""
        key = (*size, *grid)
        if key not in self._luts:
            (h, w), (hw, ww), s = size, grid, self.cfg.subpixel
            rows = nearest_index(h, hw * s).reshape(hw, s)  # frame row of each (site row, sub-row)
            cols = nearest_index(w, ww * s).reshape(ww, s)
            if len(self._luts) >= 4:
                self._luts.pop(next(iter(self._luts)))
            self._luts[key] = torch.from_numpy((rows[:, None, :, None] * w + cols[None, :, None, :]).reshape(hw * ww, s * s))
        return self._luts[key]

    def _local(self, coarse_probs: torch.Tensor, delta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The device's own upsampled logits plus M_u's correction of the pixels each (masked) site stands for."""
        device = resize(coarse_probs.clamp_min(1e-12).log(), size)  # (B, C, H, W): the device's own map
        return device + nearest(F.pixel_shuffle(delta, self.cfg.subpixel), size)

    def _fused(self, base: torch.Tensor, delta: torch.Tensor, cloud_probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, _, hw, ww = base.shape
        refined = base + delta.reshape(b, base.shape[1], -1, hw, ww).mean(2)  # (B, C, h', w'): the site's mean correction
        correction = self.fuse(refined, resize(cloud_probs, (hw, ww)))  # (B, C, h', w')
        return resize(cloud_probs.clamp_min(CLOUD_FLOOR).log(), size) + resize(correction, size)


def site_pixels(index: np.ndarray, grid: tuple[int, int], size: tuple[int, int], s: int) -> tuple[np.ndarray, ...]:
    """Working-grid sites (N,) -> the frame pixels they stand for: (ys, xs) (P,), each pixel's site row in `index`
    and its pixel-shuffle position (P,), as `nearest(pixel_shuffle(...), size)` assigns them."""
    (hw, ww), (h, w) = grid, size
    if (h, w) == (hw * s, ww * s):  # the usual case: every site stands for exactly its s x s block
        offsets = np.arange(s)
        ys = ((index // ww)[:, None, None] * s + offsets[None, :, None]).repeat(s, 2).reshape(-1)  # (N*s*s,)
        xs = ((index % ww)[:, None, None] * s + offsets[None, None, :]).repeat(s, 1).reshape(-1)
        return ys, xs, np.arange(index.size).repeat(s * s), np.tile(np.arange(s * s), index.size)
    fine_rows, fine_cols = nearest_index(hw * s, h), nearest_index(ww * s, w)  # each frame pixel's sub-pixel
    slot = np.full(hw * ww, -1)
    slot[index] = np.arange(index.size)
    row = slot[(fine_rows // s)[:, None] * ww + (fine_cols // s)[None, :]]  # (H, W) the site's row, -1 if unmasked
    ys, xs = np.nonzero(row >= 0)
    return ys, xs, row[ys, xs], (fine_rows[ys] % s) * s + fine_cols[xs] % s


def bilinear_at(logits: torch.Tensor, ys: np.ndarray, xs: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """`resize(logits, size)[0, :, ys, xs].T` without the full map: (1, C, h, w) -> (P, C), by grid_sample with the
    same half-pixel convention (align_corners=False, border clamping) as F.interpolate."""
    h, w = size
    gx = torch.from_numpy((xs + 0.5) / w * 2 - 1).float()
    gy = torch.from_numpy((ys + 0.5) / h * 2 - 1).float()
    grid = torch.stack([gx, gy], 1)[None, None]  # (1, 1, P, 2)
    return F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].T  # (P, C)
