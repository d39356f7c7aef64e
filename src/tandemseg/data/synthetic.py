"""Seeded procedural driving scenes labelled with CamVid's 11 classes, rendered with vectorised numpy.

Each scene is a straight street seen from a car: a perspective road with lane markings, pavements,
building facades with windows, a distant skyline, sky with clouds, and objects (trees, street lights,
signs, fences, parked and moving cars, pedestrians, cyclists, void clutter). A scene is fixed by one
integer `scene_seed`; frame `t` of the scene moves the camera forward and the cars/people along the
road, so consecutive frames differ smoothly.

Geometry is a pinhole camera at height `h` looking down +Z (X right, Y up, road centre line at X=0):
a world point (X, Y, Z) at depth d = Z - cam_z lands at x = vp + f (X - cam_x) / d,
y = hor + f (h - Y) / d. Ground rows and facade columns are inverted analytically, so textures (road
dashes, paving tiles, windows, fence slats) are perspective-correct and slide with the camera.

Speed comes from (a) coordinate vectors, noise tiles and tree-canopy stamps built once per image
size, (b) drawing every object on its clipped bounding-box sub-window rather than a full-frame mask,
(c) painting the road/pavement and each row of facades in one vectorised pass per frame, and (d) a
planar (3, H, W) float32 canvas painted with `np.copyto(where=mask)`, which numpy runs far faster
than boolean indexing or (h, w, 3) broadcasting. `benchmark_generator` measures it.

Determinism: all randomness comes from `numpy.random.default_rng` seeded with integer tuples, never
global state, so (seed, split, index) gives identical pixels in any process.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tandemseg.data.base import Sample
from tandemseg.data.classes import CAMVID, IGNORE_INDEX
from tandemseg.errors import DataError

SPLITS = ("train", "val", "test")
DEFAULT_FRAMES = {"train": 300, "val": 100, "test": 100}

SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)
VOID = IGNORE_INDEX

NEAR = 0.6  # m; geometry nearer than this is clipped (it would fill the frame)
FAR_GROUND = 160.0  # m; the ground ends here and a thin void "clutter" band covers the horizon
FAR_OBJECTS = 110.0  # m; objects further away are a few pixels tall and are skipped
MIN_PIXELS = 3.0  # objects projecting smaller than this (in height) are skipped
_ASSET_SEED = 0x5EED_CA11  # textures are the same for every scene; scenes differ by tile offsets
_LAYOUT_SALT = 0x7A4D  # mixed into scene seeds so layouts do not share streams with other users of a seed
_PAD = 160  # noise tiles are this much larger than the frame so windows can be offset
_STAMPS, _STAMP_SIZE = 16, 96  # precomputed tree-canopy shapes, resampled to each tree's size
_STAMP_EXTENT = 1.7  # a canopy stamp spans +-1.7 canopy radii around its centre


# ----------------------------------------------------------------------------- per-size assets


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a random grid of `cell`-pixel spacing, smoothstep-interpolated."""
    gh, gw = shape[0] // cell + 2, shape[1] // cell + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    y = np.arange(shape[0], dtype=np.float32) / cell
    x = np.arange(shape[1], dtype=np.float32) / cell
    iy, ix = y.astype(np.int64), x.astype(np.int64)
    fy, fx = y - iy, x - ix
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], fx * fx * (3 - 2 * fx)
    g0, g1 = grid[iy], grid[iy + 1]
    top = g0[:, ix] + (g0[:, ix + 1] - g0[:, ix]) * fx
    bot = g1[:, ix] + (g1[:, ix + 1] - g1[:, ix]) * fx
    return top + (bot - top) * fy


def _octaves(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, ...], weights: tuple[float, ...]) -> np.ndarray:
    out = sum(w * _value_noise(rng, shape, c) for c, w in zip(cells, weights, strict=True))
    out = (out - out.min()) / (out.max() - out.min() + 1e-6)
    return out.astype(np.float32)


@dataclass(frozen=True)
class _Assets:
    """Everything that depends only on the image size: pixel-centre coordinates and noise tiles."""

    H: int
    W: int
    ys: np.ndarray  # (H, 1) float32 pixel-centre rows
    xs: np.ndarray  # (1, W) float32 pixel-centre columns
    smooth: np.ndarray  # (H+_PAD, W+_PAD) low-frequency noise in [0, 1] (clouds, stains, road patches)
    fine: np.ndarray  # (H+_PAD, W+_PAD) 2-4 px noise in [0, 1] (leaf speckle, asphalt)
    grain: np.ndarray  # (H+_PAD, W+_PAD) per-pixel N(0, 1) sensor noise
    stamps: np.ndarray  # (_STAMPS, S, S) float32 canopy: leaf-clump shading inside, <= 0 outside

    @classmethod
    def build(cls, H: int, W: int) -> _Assets:
        rng = np.random.default_rng(_ASSET_SEED)
        shape = (H + _PAD, W + _PAD)
        smooth = _octaves(rng, shape, (64, 32, 16, 8), (0.45, 0.3, 0.15, 0.1))
        fine = _octaves(rng, shape, (4, 2), (0.6, 0.4))
        grain = rng.standard_normal(shape, dtype=np.float32)
        stamps = _canopy_stamps(rng)
        for a in (smooth, fine, grain, stamps):
            a.flags.writeable = False
        ys = (np.arange(H, dtype=np.float32) + 0.5)[:, None]
        xs = (np.arange(W, dtype=np.float32) + 0.5)[None, :]
        return cls(H, W, ys, xs, smooth, fine, grain, stamps)


def _canopy_stamps(rng: np.random.Generator) -> np.ndarray:
    """Tree canopies as unions of 3-5 ellipses with frayed outlines and clumpy shading.

    Stamps live in units of the canopy radius over [-_STAMP_EXTENT, _STAMP_EXTENT]^2, so frayed
    edges and leaf clumps scale with the tree instead of being fixed in pixels. Mask and shading
    share one array (shade inside, a negative margin outside) so drawing needs a single lookup."""
    S = _STAMP_SIZE
    v = (np.arange(S, dtype=np.float32) + 0.5) / S * 2 * _STAMP_EXTENT - _STAMP_EXTENT
    yy, xx = v[:, None], v[None, :]
    stamps = np.empty((_STAMPS, S, S), np.float32)
    for k in range(_STAMPS):
        dist = (xx / rng.uniform(0.85, 1.05)) ** 2 + (yy / rng.uniform(0.75, 1.0)) ** 2
        for _ in range(int(rng.integers(2, 5))):
            bx, by = rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.4)
            rx, ry = rng.uniform(0.45, 0.75), rng.uniform(0.4, 0.7)
            dist = np.minimum(dist, ((xx - bx) / rx) ** 2 + ((yy - by) / ry) ** 2)
        margin = 0.8 + 0.45 * _value_noise(rng, (S, S), 5) - dist  # > 0 inside the frayed outline
        clumps = _octaves(rng, (S, S), (8, 4), (0.6, 0.4))
        light = 1.15 - 0.4 * np.clip((yy + 1.0) / 2.0, 0, 1)  # lit from above, darker underside
        shade = light * (0.6 + 0.7 * clumps)
        # outside: a negative value that grows with the distance from the outline, so pixel noise
        # at draw time frays edges without punching holes far inside or outside
        stamps[k] = np.where(margin > 0, shade, np.maximum(margin * 4.0, -1.0) - 0.001)
    return stamps


# ----------------------------------------------------------------------------- scene description


@dataclass
class _Obj:
    """One movable/static thing; `z` is its world position at t=0 and `vz` its speed in m/frame."""

    kind: str
    x: float
    z: float
    vz: float
    p: dict = field(default_factory=dict)


@dataclass
class _Side:
    """The facade plane on one side of the street (side = -1 left, +1 right)."""

    side: int
    B: float  # |X| of the facade plane
    z0: np.ndarray  # (n,) building starts, sorted
    z1: np.ndarray  # (n,) building ends
    height: np.ndarray
    depth: np.ndarray  # how far the building extends away from the road (for its end wall)
    wall: np.ndarray  # (n, 3) colours
    glass: np.ndarray  # (n, 3)
    pitch: np.ndarray  # window spacing along the street
    floor: np.ndarray  # storey height
    winw: np.ndarray  # window width as a fraction of pitch
    brick: np.ndarray  # bool: draw mortar lines
    shop: np.ndarray  # bool: shop front with awning on the ground floor
    awning: np.ndarray  # (n, 3)
    end_visible: np.ndarray  # bool: the near end wall can be seen (gap or lower neighbour before it)
    light: float  # sun-side brightness factor


@dataclass
class _Scene:
    """A scene's full layout: camera, street geometry, colours, facades and objects (all in metres)."""

    f_frac: float
    hor_frac: float
    vp_shift: float
    cam_h: float
    cam_x: float
    v_cam: float
    road_l: float  # road spans X in [-road_l, road_r]
    road_r: float
    lane_w: float
    sigma: int  # +1: we drive on the right half of the road
    n_ours: int
    n_opp: int
    col: dict  # material colours
    exposure: float
    grain: float
    sky_top: np.ndarray
    sky_bot: np.ndarray
    cloud_amt: float
    haze_col: np.ndarray
    tex_off: tuple[int, int]
    skyline_edges: np.ndarray  # (n+1,) column fractions
    skyline_h: np.ndarray  # (n,) height as a fraction of H
    skyline_cls: np.ndarray  # (n,) BUILDING or TREE
    skyline_col: np.ndarray  # (n, 3)
    sides: tuple[_Side, _Side]
    gap_fences: list[_Obj]
    zebra: tuple[float, float] | None
    objects: list[_Obj]
    obj_z: np.ndarray
    obj_vz: np.ndarray
    obj_reach: np.ndarray  # extra depth an object spans (fence segments, cars) for culling


@dataclass(frozen=True)
class _Cam:
    """The camera of one frame, in pixels (f, hor, vp) and metres (h, x, z)."""

    f: float
    hor: float
    vp: float
    h: float
    x: float
    z: float


# ----------------------------------------------------------------------------- layout (per scene)


def _u(rng: np.random.Generator, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


def _jit(rng: np.random.Generator, base: tuple[float, float, float] | np.ndarray, amount: float = 14.0, bright: tuple[float, float] = (0.85, 1.15)) -> np.ndarray:
    """A colour near `base`: per-channel jitter plus a brightness factor, so class colours overlap."""
    c = np.asarray(base, np.float32) * _u(rng, *bright) + rng.normal(0, amount, 3).astype(np.float32)
    return np.clip(c, 0, 255).astype(np.float32)


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[int(rng.integers(len(options)))]


_WALLS = [(150, 78, 62), (185, 165, 130), (140, 140, 138), (205, 200, 188), (175, 150, 155), (95, 88, 82), (160, 120, 85), (120, 130, 140)]
_CAR_COLOURS = [(215, 215, 212), (30, 30, 34), (160, 162, 165), (170, 30, 30), (35, 60, 140), (40, 80, 55), (200, 170, 40), (90, 90, 95), (120, 60, 40), (230, 230, 225)]
_CLOTHES = [(40, 40, 60), (180, 40, 40), (50, 90, 150), (200, 200, 190), (60, 60, 60), (150, 120, 80), (30, 100, 70), (210, 170, 60), (100, 40, 110)]
_SKIN = [(225, 185, 150), (190, 140, 100), (140, 95, 65), (90, 60, 40)]


def _make_colours(rng: np.random.Generator) -> dict:
    """Per-scene material colours; greys deliberately overlap between road, pavement, walls, sky."""
    road_grey = _u(rng, 70, 125)
    return {
        "road": _jit(rng, (road_grey, road_grey, road_grey + _u(rng, -4, 8)), 6),
        "marking": _jit(rng, (225, 225, 215), 8),
        "yellow": _jit(rng, (215, 180, 50), 10),
        "pavement": _jit(rng, _pick(rng, [(150, 145, 138), (128, 128, 132), (165, 120, 105), (175, 165, 145)]), 10),
        "kerb": _jit(rng, (170, 168, 160), 10),
        "outer": _jit(rng, _pick(rng, [(120, 118, 110), (95, 110, 70), (140, 130, 115)]), 10),
        "clutter": _jit(rng, (90, 85, 80), 15),
        "trunk": _jit(rng, (85, 65, 45), 10),
        "leaf": _jit(rng, _pick(rng, [(60, 105, 40), (80, 125, 50), (55, 95, 45), (115, 120, 45), (70, 100, 60)]), 10, (0.9, 1.15)),
        "pole": _jit(rng, _pick(rng, [(110, 112, 115), (60, 70, 62), (150, 150, 140), (40, 40, 45)]), 8),
        "fence": _jit(rng, _pick(rng, [(125, 95, 65), (80, 90, 85), (205, 205, 200), (50, 90, 60), (150, 150, 150)]), 10),
    }


def _make_sky(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    kind = int(rng.integers(4))
    if kind == 0:  # clear blue
        top, bot, clouds = (70, 125, 200), (175, 200, 225), _u(rng, 0.0, 0.5)
    elif kind == 1:  # overcast grey: close to concrete and road greys
        g = _u(rng, 150, 215)
        top, bot, clouds = (g - 10, g - 5, g + 5), (g + 15, g + 15, g + 18), _u(rng, 0.2, 0.8)
    elif kind == 2:  # hazy evening
        top, bot, clouds = (110, 130, 185), (230, 190, 150), _u(rng, 0.0, 0.4)
    else:  # pale
        top, bot, clouds = (140, 170, 210), (215, 220, 225), _u(rng, 0.2, 0.7)
    return _jit(rng, top, 8), _jit(rng, bot, 8), clouds


def _make_skyline(rng: np.random.Generator, urban: float) -> tuple[np.ndarray, ...]:
    n = int(rng.integers(10, 28))
    widths = rng.uniform(0.5, 1.5, n)
    edges = np.concatenate([[0.0], np.cumsum(widths) / widths.sum()])
    trees = rng.random() < 0.5 * (1 - urban)
    cls = np.where(rng.random(n) < (0.8 if trees else 0.15), TREE, BUILDING).astype(np.uint8)
    h = np.where(cls == TREE, rng.uniform(0.01, 0.035, n), rng.uniform(0.01, 0.02 + 0.05 * urban, n))
    grey = rng.uniform(110, 175, n)
    col = np.stack([grey, grey + 3, grey + 10], 1)
    col[cls == TREE] = np.array([70, 95, 70]) * rng.uniform(0.8, 1.2, (int((cls == TREE).sum()), 1))
    return edges, h, cls, col.astype(np.float32)


def _make_side(rng: np.random.Generator, side: int, B: float, zmax: float, urban: float, light: float) -> tuple[_Side, list[tuple[float, float]]]:
    """Buildings along one facade plane, with gaps (returned so fences/trees can fill them)."""
    rows, gaps = [], []
    z = -25.0
    gap_p = 0.12 + 0.35 * (1 - urban)
    while z < zmax:
        if rng.random() < gap_p:
            g = _u(rng, 3, 14)
            gaps.append((z, z + g))
            z += g
        w = _u(rng, 7, 26)
        rows.append((z, z + w, _u(rng, 6.0, 10.0 + 22.0 * urban)))
        z += w
    n = len(rows)
    # float32 so per-pixel comparisons against float32 coordinates do not upcast
    z0 = np.array([r[0] for r in rows], np.float32)
    z1 = np.array([r[1] for r in rows], np.float32)
    height = np.array([r[2] for r in rows], np.float32)
    prev_gap = np.concatenate([[True], z0[1:] > z1[:-1] + 1e-6])
    prev_lower = np.concatenate([[True], height[:-1] < height[1:]])
    walls = np.stack([_jit(rng, _pick(rng, _WALLS), 12) for _ in range(n)])
    glass = np.stack([_jit(rng, _pick(rng, [(50, 60, 75), (80, 95, 110), (35, 40, 45), (110, 130, 150)]), 10) for _ in range(n)])
    awning = np.stack([_jit(rng, _pick(rng, [(170, 40, 40), (40, 110, 60), (40, 60, 140), (200, 160, 40)]), 10) for _ in range(n)])
    s = _Side(
        side=side, B=B, z0=z0, z1=z1, height=height, depth=rng.uniform(8, 16, n), wall=walls, glass=glass,
        pitch=rng.uniform(1.8, 3.4, n).astype(np.float32), floor=rng.uniform(2.9, 3.6, n).astype(np.float32),
        winw=rng.uniform(0.35, 0.62, n).astype(np.float32),
        brick=rng.random(n) < 0.35, shop=rng.random(n) < 0.45 * urban + 0.1, awning=awning,
        end_visible=prev_gap | prev_lower, light=light,
    )
    return s, gaps


def _trees_poles_signs(rng: np.random.Generator, sc: dict, side: int, edge: float, pave: float, B: float, zmax: float, gaps: list) -> list[_Obj]:
    out: list[_Obj] = []
    col = sc["col"]
    if rng.random() < sc["tree_density"]:  # a row of street trees on this pavement
        z = _u(rng, -20, 0)
        spacing = _u(rng, 7, 18)
        xt = side * (edge + pave * _u(rng, 0.3, 0.65))
        while z < zmax:
            out.append(_tree(rng, col, xt + _u(rng, -0.2, 0.2), z))
            z += spacing * _u(rng, 0.7, 1.4)
    for g0, g1 in gaps:  # trees just in front of building gaps
        if rng.random() < 0.6:
            out.append(_tree(rng, col, side * (B - _u(rng, 0.6, 1.2)), _u(rng, g0, g1), big=True))
    z = _u(rng, -25, 5)
    lamp_spacing = _u(rng, 18, 34)
    arm = _u(rng, 0.8, 2.0) if rng.random() < 0.7 else 0.0
    while z < zmax:  # street lights
        out.append(_Obj("pole", side * (edge + 0.45), z, 0.0, {"h": _u(rng, 6.0, 8.5), "w": _u(rng, 0.14, 0.24), "arm": arm, "col": col["pole"]}))
        z += lamp_spacing
    z = _u(rng, -10, 20)
    while z < zmax:  # signs and traffic lights
        kind = _pick(rng, ["circle", "circle", "rect", "triangle", "light"])
        out.append(_Obj("sign", side * (edge + _u(rng, 0.35, 0.8)), z, 0.0, {
            "kind": kind, "h": _u(rng, 2.2, 3.0), "size": _u(rng, 0.6, 1.0), "post": col["pole"] * _u(rng, 0.8, 1.1),
            "c1": _jit(rng, _pick(rng, [(200, 30, 30), (30, 70, 170), (230, 230, 225), (215, 180, 40)]), 10),
            "c2": _jit(rng, _pick(rng, [(235, 235, 230), (200, 30, 30), (30, 30, 30)]), 8), "lit": int(rng.integers(3)),
        }))
        z += _u(rng, 10, 40)
    return out


def _tree(rng: np.random.Generator, col: dict, x: float, z: float, big: bool = False) -> _Obj:
    return _Obj("tree", x, z, 0.0, {
        "trunk_h": _u(rng, 1.6, 3.2), "trunk_w": _u(rng, 0.2, 0.4), "r": _u(rng, 1.4, 3.0) * (1.3 if big else 1.0),
        "stamp": int(rng.integers(_STAMPS)), "aspect": _u(rng, 0.85, 1.2),
        "leaf": _jit(rng, col["leaf"], 8, (0.9, 1.1)), "trunk": col["trunk"] * _u(rng, 0.8, 1.2), "off": _offset(rng),
    })


def _offset(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(_PAD)), int(rng.integers(_PAD))


def _fence_segments(rng: np.random.Generator, col: np.ndarray, x: float, z0: float, z1: float, seg: float, height: float, style: str) -> list[_Obj]:
    """Split a fence into short segments so that painter's order against nearby objects stays right."""
    out = []
    z = z0
    while z < z1 - 0.05:
        e = min(z + seg, z1)
        out.append(_Obj("fence", x, z, 0.0, {"len": e - z, "h": height, "style": style, "col": col}))
        z = e
    return out


def _car(rng: np.random.Generator, x: float, z: float, vz: float, facing: int) -> _Obj:
    length = _u(rng, 3.8, 4.8)
    return _Obj("car", x, z, vz, {
        "len": length, "wid": _u(rng, 1.65, 1.9), "hgt": _u(rng, 1.35, 1.6), "body": _u(rng, 0.8, 0.95),
        "col": _jit(rng, _pick(rng, _CAR_COLOURS), 10), "facing": facing,  # +1 shows its rear, -1 its front
        "glass": _jit(rng, (45, 55, 65), 8),
    })


def _cars(rng: np.random.Generator, sc: dict, zmax: float) -> list[_Obj]:
    out: list[_Obj] = []
    lane_w, sigma, v_cam = sc["lane_w"], sc["sigma"], sc["v_cam"]
    for k in range(sc["n_ours"]):
        x = sigma * (k + 0.5) * lane_w
        own = abs(x - sc["cam_x"]) < lane_w / 2
        # our lane never moves slower than the camera, so we never drive into a car ahead
        speed = v_cam * (_u(rng, 1.0, 1.25) if own else _u(rng, 0.55, 1.4))
        z = _u(rng, 10, 40) if own else _u(rng, -25, 10)
        while z < zmax:
            if rng.random() < sc["traffic"]:
                out.append(_car(rng, x + _u(rng, -0.25, 0.25), z, speed, +1))
            z += _u(rng, 9, 30)
    for k in range(sc["n_opp"]):
        x = -sigma * (k + 0.5) * lane_w
        speed = -_u(rng, 0.25, 0.55)
        z = _u(rng, -10, 20)
        while z < zmax + 30:
            if rng.random() < sc["traffic"]:
                out.append(_car(rng, x + _u(rng, -0.25, 0.25), z, speed, -1))
            z += _u(rng, 12, 40)
    return out


def _parked(rng: np.random.Generator, side: int, edge: float, zmax: float) -> list[_Obj]:
    out = []
    z = _u(rng, -10, 15)
    while z < zmax:
        if rng.random() < 0.6:
            out.append(_car(rng, side * (edge - 1.15), z, 0.0, +1 if rng.random() < 0.6 else -1))
        z += _u(rng, 5.2, 9)
    return out


def _pedestrians(rng: np.random.Generator, side: int, edge: float, pave: float, zmax: float, density: float) -> list[_Obj]:
    out = []
    n = int(rng.poisson(density * zmax / 8))
    for _ in range(n):
        out.append(_Obj("ped", side * (edge + _u(rng, 0.5, max(pave - 0.4, 0.6))), _u(rng, -5, zmax), _u(rng, 0.03, 0.055) * (1 if rng.random() < 0.5 else -1), {
            "h": _u(rng, 1.55, 1.9), "shirt": _jit(rng, _pick(rng, _CLOTHES), 12), "pants": _jit(rng, _pick(rng, _CLOTHES), 12),
            "skin": _jit(rng, _pick(rng, _SKIN), 8), "hair": _jit(rng, (40, 30, 25), 10), "phase": _u(rng, 0, 6.3),
            "wide": _u(rng, 0.9, 1.2),
        }))
    return out


def _cyclists(rng: np.random.Generator, sc: dict, zmax: float, parked_sides: set) -> list[_Obj]:
    out = []
    for _ in range(int(rng.poisson(sc["cyclist_rate"]))):
        side = int(_pick(rng, [-1, 1]))
        # ride near the kerb, or just outside the parking strip where there is one
        edge = (sc["road_r"] if side > 0 else sc["road_l"]) - (2.3 if side in parked_sides else 0.0)
        moving_away = side == sc["sigma"]
        out.append(_Obj("cyclist", side * (edge - _u(rng, 0.6, 1.0)), _u(rng, 3, 35), (1 if moving_away else -1) * _u(rng, 0.12, 0.22), {
            "frame": _jit(rng, _pick(rng, _CAR_COLOURS), 12), "shirt": _jit(rng, _pick(rng, _CLOTHES), 12),
            "pants": _jit(rng, _pick(rng, _CLOTHES), 12), "skin": _jit(rng, _pick(rng, _SKIN), 8),
            "helmet": _jit(rng, _pick(rng, _CLOTHES), 12), "phase": _u(rng, 0, 6.3),
        }))
    return out


def _clutter(rng: np.random.Generator, side: int, edge: float, pave: float, zmax: float) -> list[_Obj]:
    """Bins and boxes on the pavement, labelled void like CamVid's unlabelled street furniture."""
    return [
        _Obj("clutter", side * (edge + _u(rng, 0.3, pave)), _u(rng, -5, zmax), 0.0, {
            "w": _u(rng, 0.4, 0.9), "h": _u(rng, 0.6, 1.1), "col": _jit(rng, _pick(rng, [(40, 70, 50), (70, 70, 75), (30, 30, 30), (150, 120, 60)]), 10),
        })
        for _ in range(int(rng.poisson(zmax / 45)))
    ]


def _street(rng: np.random.Generator) -> dict:
    """Lanes, driving side, parking strips and the camera's lane: everything that fixes the road's X extent."""
    sigma = 1 if rng.random() < 0.5 else -1
    lane_w = _u(rng, 2.9, 3.5)
    n_ours = 2 if rng.random() < 0.3 else 1
    n_opp = 0 if rng.random() < 0.15 else (2 if rng.random() < 0.2 else 1)
    # a parking strip (2.3 m) beyond the traffic lanes keeps parked cars out of the driving lanes
    parked_sides = {side for side in (-1, 1) if rng.random() < 0.45}
    ours_ext = n_ours * lane_w + (2.3 if sigma in parked_sides else _u(rng, 0, 0.8))
    opp_ext = max(n_opp, 0.7) * lane_w + (2.3 if -sigma in parked_sides else _u(rng, 0, 0.8))
    road_r, road_l = (ours_ext, opp_ext) if sigma > 0 else (opp_ext, ours_ext)
    lane = int(rng.integers(n_ours))
    return {
        "lane_w": lane_w, "sigma": sigma, "n_ours": n_ours, "n_opp": n_opp, "road_r": road_r, "road_l": road_l,
        "parked_sides": parked_sides, "cam_x": sigma * (lane + 0.5) * lane_w + _u(rng, -0.4, 0.4),
    }


def _populate_side(rng: np.random.Generator, sc: dict, side: int, zmax: float, urban: float, light: float) -> tuple[_Side, list[_Obj], list[_Obj]]:
    """One side of the street: its facades, and the objects and gap fences in front of them."""
    edge = sc["road_r"] if side > 0 else sc["road_l"]
    pave = _u(rng, 3.0, 8.0)
    B = edge + pave
    facades, gaps = _make_side(rng, side, B, zmax, urban, light)
    objects = _trees_poles_signs(rng, sc, side, edge, pave, B, zmax, gaps)
    fcol = sc["col"]["fence"]
    gap_fences: list[_Obj] = []
    for g0, g1 in gaps:
        if rng.random() < 0.7:
            gap_fences += _fence_segments(rng, fcol, side * (B - 0.05), g0, g1, 1e9, _u(rng, 1.2, 2.0), _pick(rng, ["boards", "bars", "panel"]))
    if rng.random() < 0.45:  # railings along the kerb, split for correct occlusion
        r0 = _u(rng, -10, 60)
        objects += _fence_segments(rng, fcol * _u(rng, 0.8, 1.2), side * (edge + 0.25), r0, r0 + _u(rng, 15, 70), 2.5, _u(rng, 0.9, 1.2), "bars")
    if side in sc["parked_sides"]:
        objects += _parked(rng, side, edge, zmax)
    objects += _pedestrians(rng, side, edge, pave, zmax, _u(rng, 0.15, 1.2))
    objects += _clutter(rng, side, edge, pave, zmax)
    return facades, objects, gap_fences


def _make_scene(scene_seed: int, sequence_length: int = 30) -> _Scene:
    """Draw a scene's full layout from its seed (the layout covers the camera travel of the sequence)."""
    rng = np.random.default_rng([_LAYOUT_SALT, int(scene_seed)])
    urban = _u(rng, 0.2, 1.0)
    sc = _street(rng)
    sc["v_cam"] = v_cam = _u(rng, 0.12, 0.55)
    zmax = v_cam * max(sequence_length, 60) + FAR_GROUND + 20
    sky_top, sky_bot, clouds = _make_sky(rng)
    sc.update(col=_make_colours(rng), tree_density=_u(rng, 0.1, 0.8), traffic=_u(rng, 0.25, 0.7), cyclist_rate=_u(rng, 1.5, 4.0))
    sun = 1 if rng.random() < 0.5 else -1  # the sunlit side's facades are brighter
    sides, objects, gap_fences = [], [], []
    for side in (-1, 1):
        light = _u(rng, 1.0, 1.15) if side == sun else _u(rng, 0.65, 0.85)
        facades, objs, fences = _populate_side(rng, sc, side, zmax, urban, light)
        sides.append(facades)
        objects += objs
        gap_fences += fences
    objects += _cars(rng, sc, zmax)
    objects += _cyclists(rng, sc, zmax, sc["parked_sides"])
    edges, sh, scls, scol = _make_skyline(rng, urban)
    zebra = None
    if rng.random() < 0.35:
        zc = _u(rng, 15, 80)
        zebra = (zc, zc + _u(rng, 3, 5))
    return _Scene(
        f_frac=_u(rng, 0.72, 0.92), hor_frac=_u(rng, 0.42, 0.52), vp_shift=_u(rng, -0.05, 0.05), cam_h=_u(rng, 1.7, 2.3),
        cam_x=sc["cam_x"], v_cam=v_cam, road_l=sc["road_l"], road_r=sc["road_r"], lane_w=sc["lane_w"], sigma=sc["sigma"],
        n_ours=sc["n_ours"], n_opp=sc["n_opp"], col=sc["col"], exposure=_u(rng, 0.75, 1.15), grain=_u(rng, 2.0, 6.0),
        sky_top=sky_top, sky_bot=sky_bot, cloud_amt=clouds, haze_col=(sky_bot * 0.7 + 50).astype(np.float32), tex_off=_offset(rng),
        skyline_edges=edges, skyline_h=sh, skyline_cls=scls, skyline_col=scol, sides=(sides[0], sides[1]), gap_fences=gap_fences,
        zebra=zebra, objects=objects, obj_z=np.array([o.z for o in objects]), obj_vz=np.array([o.vz for o in objects]),
        obj_reach=np.array([o.p.get("len", 0.0) for o in objects]),
    )


# ----------------------------------------------------------------------------- canvas and primitives


def _frac(v: np.ndarray) -> np.ndarray:
    """v mod 1 for positive periods; `v - floor(v)` is ~30x faster than numpy's `%` on float32."""
    return v - np.floor(v)


def _c3(colour: np.ndarray) -> np.ndarray:
    return colour.reshape(3, 1, 1)


def _shaded(colour: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """(3, h, w) = colour[c] * shade, built channel by channel.

    numpy is several times slower at (3, 1, w) x (1, h, w) broadcasting than at three 2-D ops."""
    out = np.empty((3, *shade.shape), np.float32)
    for ch in range(3):
        np.multiply(shade, colour[ch], out=out[ch])
    return out


class _Canvas:
    """The frame being drawn, planar (3, H, W) float32 RGB plus (H, W) uint8 labels.

    Planar layout matters for speed: broadcasting a (3,) colour over a (3, h, w) window and
    `np.copyto(..., where=mask)` run an order of magnitude faster than on interleaved (h, w, 3).
    """

    def __init__(self, a: _Assets, cam: _Cam, scene: _Scene) -> None:
        self.a, self.cam, self.scene = a, cam, scene
        self.H, self.W = a.H, a.W
        self.img = np.empty((3, a.H, a.W), np.float32)
        self.lab = np.empty((a.H, a.W), np.uint8)

    def span(self, lo: float, hi: float, n: int, min1: bool = True) -> tuple[int, int]:
        """Pixel indices whose centres lie in [lo, hi), clipped; thin things keep at least one pixel."""
        i0, i1 = math.ceil(lo - 0.5), math.ceil(hi - 0.5)
        if min1 and i1 <= i0:
            i1 = i0 + 1
        return max(i0, 0), min(i1, n)

    def haze(self, colour: np.ndarray, d: float) -> np.ndarray:
        """Aerial perspective: far things fade toward the horizon colour."""
        k = min(d / FAR_GROUND, 1.0) ** 1.5 * 0.55
        return colour * (1 - k) + self.scene.haze_col * k

    def noise(self, tile: np.ndarray, r0: int, r1: int, c0: int, c1: int, off: tuple[int, int]) -> np.ndarray:
        return tile[r0 + off[0] : r1 + off[0], c0 + off[1] : c1 + off[1]]

    def rect(self, x0: float, x1: float, y0: float, y1: float, colour: np.ndarray, cls: int) -> None:
        c0, c1 = self.span(x0, x1, self.W)
        r0, r1 = self.span(y0, y1, self.H)
        if c1 > c0 and r1 > r0:
            self.img[:, r0:r1, c0:c1] = _c3(colour)
            self.lab[r0:r1, c0:c1] = cls

    def paint(self, r0: int, c0: int, mask: np.ndarray, colour: np.ndarray, cls: int) -> None:
        """Paint `colour` ((3,) or (3, h, w)) and label `cls` where `mask` (h, w) is set, in the window at (r0, c0)."""
        h, w = mask.shape
        np.copyto(self.img[:, r0 : r0 + h, c0 : c0 + w], _c3(colour) if colour.ndim == 1 else colour, where=mask[None])
        np.copyto(self.lab[r0 : r0 + h, c0 : c0 + w], cls, where=mask)

    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[int, int, np.ndarray, np.ndarray] | None:
        """Clipped window for a float bbox: (r0, c0, ys (h, 1), xs (1, w)) pixel centres, or None if empty."""
        c0, c1 = self.span(x0, x1, self.W)
        r0, r1 = self.span(y0, y1, self.H)
        if c1 <= c0 or r1 <= r0:
            return None
        return r0, c0, self.a.ys[r0:r1], self.a.xs[:, c0:c1]

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, colour: np.ndarray, cls: int) -> None:
        rx, ry = max(rx, 0.6), max(ry, 0.6)
        win = self.window(cx - rx, cx + rx, cy - ry, cy + ry)
        if win is not None:
            r0, c0, ys, xs = win
            self.paint(r0, c0, ((xs - cx) * (1 / rx)) ** 2 + ((ys - cy) * (1 / ry)) ** 2 <= 1.0, colour, cls)

    def segment(self, ax: float, ay: float, bx: float, by: float, r: float, colour: np.ndarray, cls: int) -> None:
        """A thick line (capsule) from a to b with radius r pixels (at least about a pixel wide)."""
        r = max(r, 0.55)
        win = self.window(min(ax, bx) - r, max(ax, bx) + r, min(ay, by) - r, max(ay, by) + r)
        if win is not None:
            r0, c0, ys, xs = win
            self.paint(r0, c0, _seg_dist2(xs, ys, ax, ay, bx, by) <= r * r, colour, cls)

    def trapezoid(self, cx: float, y_top: float, y_bot: float, w_top: float, w_bot: float, colour: np.ndarray, cls: int) -> None:
        """Symmetric trapezoid centred on cx; widths are full widths in pixels."""
        hw = max(w_top, w_bot) / 2
        win = self.window(cx - hw, cx + hw, y_top, y_bot)
        if win is not None:
            r0, c0, ys, xs = win
            k = np.clip((ys - y_top) * (1 / max(y_bot - y_top, 1e-3)), 0, 1)
            half = np.maximum((w_top + (w_bot - w_top) * k) * 0.5, 0.5)  # (h, 1)
            self.paint(r0, c0, np.abs(xs - cx) <= half, colour, cls)


def _seg_dist2(px: np.ndarray, py: np.ndarray, ax: float, ay: float, bx: float, by: float) -> np.ndarray:
    """Squared distance from points to segment ab (broadcasting)."""
    dx, dy = bx - ax, by - ay
    ll = dx * dx + dy * dy
    if ll < 1e-9:
        return (px - ax) ** 2 + (py - ay) ** 2
    tt = np.clip(((px - ax) * dx + (py - ay) * dy) * (1 / ll), 0.0, 1.0)
    return (px - ax - tt * dx) ** 2 + (py - ay - tt * dy) ** 2


@dataclass
class _PlaneWin:
    """A window over a vertical plane X = const: world Z per column and world height Y per pixel."""

    r0: int
    c0: int
    Z: np.ndarray  # (1, w)
    Y: np.ndarray  # (h, w)
    d: np.ndarray  # (1, w)
    xr: float  # X - cam_x of the plane


def _plane(cv: _Canvas, X: float, z0: float, z1: float, y_top: float, far: float = FAR_GROUND) -> _PlaneWin | None:
    """Invert the projection for a vertical plane parallel to the road between z0..z1 and heights 0..y_top."""
    cam = cv.cam
    xr = X - cam.x
    if abs(xr) < 0.05:
        return None  # edge-on: invisible
    d0, d1 = max(z0 - cam.z, NEAR), min(z1 - cam.z, far)
    if d1 <= d0:
        return None
    xa, xb = cam.vp + cam.f * xr / d0, cam.vp + cam.f * xr / d1
    c0, c1 = cv.span(min(xa, xb), max(xa, xb), cv.W, min1=False)
    if c1 <= c0:
        return None
    d = np.clip((cam.f * xr) / (cv.a.xs[:, c0:c1] - cam.vp), d0, d1)
    top = cam.hor + cam.f * (cam.h - y_top) / (d0 if y_top > cam.h else d1)
    r0, r1 = cv.span(top, cam.hor + cam.f * cam.h / d0 + 1, cv.H, min1=False)
    if r1 <= r0:
        return None
    Y = cam.h - (cv.a.ys[r0:r1] - cam.hor) * (d * (1 / cam.f))
    return _PlaneWin(r0, c0, cam.z + d, Y, d, xr)


# ----------------------------------------------------------------------------- background layers


def _draw_sky(cv: _Canvas, t: int) -> None:
    sc, cam = cv.scene, cv.cam
    r1 = min(max(math.ceil(cam.hor - 0.5), 0), cv.H)
    if r1 == 0:
        return
    g = np.clip(cv.a.ys[:r1] / max(cam.hor, 1.0), 0, 1) ** 0.8  # (r1, 1)
    cloud_col = sc.sky_bot * 0.25 + 185
    c = None
    if sc.cloud_amt > 0.05:
        # clouds drift one pixel every few frames: a slow, smooth change within a sequence
        off = (sc.tex_off[0], (sc.tex_off[1] + t // 3) % _PAD)
        n = cv.noise(cv.a.smooth, 0, r1, 0, cv.W, off)
        c = np.clip((n - (0.75 - 0.35 * sc.cloud_amt)) * 3.4, 0, 0.85)
    for ch in range(3):
        base = sc.sky_top[ch] + (sc.sky_bot[ch] - sc.sky_top[ch]) * g  # (r1, 1) vertical gradient
        if c is None:
            cv.img[ch, :r1] = base
        else:
            np.multiply(c, cloud_col[ch] - base, out=cv.img[ch, :r1])
            cv.img[ch, :r1] += base
    cv.lab[:r1] = SKY


def _draw_skyline(cv: _Canvas) -> None:
    """Distant buildings/tree line on the horizon (static: they are too far away to move)."""
    sc, cam = cv.scene, cv.cam
    blocks = np.clip(np.searchsorted(sc.skyline_edges, cv.a.xs[0] / cv.W, side="right") - 1, 0, len(sc.skyline_h) - 1)
    top = cam.hor - sc.skyline_h[blocks] * cv.H
    r0, r1 = cv.span(float(top.min()), cam.hor, cv.H, min1=False)
    if r1 <= r0:
        return
    mask = cv.a.ys[r0:r1] >= top[None, :]
    np.copyto(cv.img[:, r0:r1], sc.skyline_col[blocks].T[:, None, :], where=mask[None])
    np.copyto(cv.lab[r0:r1], sc.skyline_cls[blocks][None, :], where=mask)


# materials of the ground pass, their label and texture strength
M_ROAD, M_MARK, M_YELLOW, M_KERB, M_PAVE, M_OUTER, M_VOID = range(7)
_GROUND_LABEL = np.array([ROAD, ROAD, ROAD, PAVEMENT, PAVEMENT, PAVEMENT, VOID], np.uint8)
_GROUND_AMP = np.array([0.22, 0.1, 0.1, 0.15, 0.2, 0.35, 0.4], np.float32)
_GROUND_KEYS = ("road", "marking", "yellow", "kerb", "pavement", "outer", "clutter")


def _draw_ground(cv: _Canvas) -> None:
    """Road, markings, kerbs, pavements and the ground beyond, in one vectorised pass over ground rows."""
    sc, cam, a = cv.scene, cv.cam, cv.a
    g_far = cam.hor + cam.f * cam.h / FAR_GROUND
    # the void clutter band: from the horizon to where the ground model ends
    b0, b1 = cv.span(cam.hor - 1.0, g_far, cv.H)
    if b1 > b0:
        np.multiply(_c3(sc.col["clutter"]), 0.85 + 0.3 * cv.noise(a.fine, b0, b1, 0, cv.W, sc.tex_off)[None], out=cv.img[:, b0:b1])
        cv.lab[b0:b1] = VOID
    g0 = max(b1, 0)
    if g0 >= cv.H:
        return
    d = (cam.f * cam.h) / (a.ys[g0:] - cam.hor)  # (h, 1) depth of each ground row
    pix = d * (1 / cam.f)  # metres per pixel on that row
    Z = cam.z + d
    X = (a.xs - cam.vp) * pix
    X += cam.x  # (h, W) world X of every ground pixel
    mat = _ground_materials(sc, X)
    road = mat == M_ROAD
    _markings(sc, mat, X, Z, pix, road)
    fine = cv.noise(a.fine, g0, cv.H, 0, cv.W, sc.tex_off)
    smooth = cv.noise(a.smooth, g0, cv.H, 0, cv.W, sc.tex_off)
    shade = _GROUND_AMP.take(mat) * (fine - 0.5)
    shade += 0.18 * smooth + (1.0 - 0.09)
    # paving-tile mortar only on near rows, where tiles are big enough not to alias
    n_ok = int(np.count_nonzero(0.6 / pix[:, 0] > 5.0))
    if n_ok:
        Xn, Zn = X[-n_ok:] * (1 / 0.6), Z[-n_ok:] * (1 / 0.6)
        lines = ((_frac(Xn) < 0.08) | (_frac(Zn) < 0.08)) & (mat[-n_ok:] == M_PAVE)
        np.subtract(shade[-n_ok:], 0.2, out=shade[-n_ok:], where=lines)
    k = np.minimum(d * (1 / FAR_GROUND), 1.0) ** 1.5 * 0.55  # haze per row (h, 1)
    shade *= 1 - k
    lut = np.stack([sc.col[key] for key in _GROUND_KEYS], 1)  # (3, M)
    out = cv.img[:, g0:]
    for ch in range(3):  # per-channel 1-D take is the fastest gather
        np.multiply(lut[ch].take(mat), shade, out=out[ch])
        out[ch] += sc.haze_col[ch] * k
    cv.lab[g0:] = _GROUND_LABEL.take(mat)


def _ground_materials(sc: _Scene, X: np.ndarray) -> np.ndarray:
    """Material id per ground pixel from its world X (pavement, kerbs, void strip at building bases)."""
    Bl, Br = sc.sides[0].B, sc.sides[1].B
    mat = np.full(X.shape, M_OUTER, np.uint8)
    mat[(X > -Bl) & (X < Br)] = M_PAVE
    mat[((X > -Bl - 0.15) & (X < -Bl + 0.12)) | ((X > Br - 0.12) & (X < Br + 0.15))] = M_VOID
    mat[(X > -sc.road_l - 0.25) & (X < sc.road_r + 0.25)] = M_KERB
    mat[(X > -sc.road_l) & (X < sc.road_r)] = M_ROAD
    return mat


def _markings(sc: _Scene, mat: np.ndarray, X: np.ndarray, Z: np.ndarray, pix: np.ndarray, road: np.ndarray) -> None:
    """Lane markings (class Road): centre line, lane dashes, edge lines, optional zebra crossing."""
    half = np.maximum(0.07, 0.5 * pix)  # keep lines about a pixel wide far away
    dash = _frac(Z * (1 / 9.0)) < 0.45  # (h, 1)
    lines = []
    if sc.n_opp > 0:
        lines.append((0.0, True, M_YELLOW if sc.col["road"][0] < 95 else M_MARK))
    lines += [(sc.sigma * k * sc.lane_w, True, M_MARK) for k in range(1, sc.n_ours)]
    lines += [(-sc.sigma * k * sc.lane_w, True, M_MARK) for k in range(1, sc.n_opp)]
    lines += [(sc.road_r - 0.3, False, M_MARK), (-sc.road_l + 0.3, False, M_MARK)]
    for x, dashed, m in lines:
        on = np.abs(X - x) < half
        mat[(on & dash) if dashed else on] = m
    if sc.zebra is not None:
        rows = ((Z >= sc.zebra[0]) & (Z < sc.zebra[1]) & (0.45 / pix > 1.5))[:, 0]
        if rows.any():
            sub = mat[rows]
            sub[(_frac(X[rows] * (1 / 0.9)) < 0.5) & road[rows]] = M_MARK
            mat[rows] = sub


def _draw_end_walls(cv: _Canvas, s: _Side) -> None:
    """Near end walls of buildings (seen through gaps or above lower neighbours), far to near."""
    cam = cv.cam
    xr = s.side * s.B - cam.x
    d0 = s.z0 - cam.z
    for i in np.nonzero(s.end_visible & (d0 > NEAR) & (d0 < FAR_GROUND))[0][::-1]:
        d = float(d0[i])
        xa = cam.vp + cam.f * xr / d
        xb = cam.vp + cam.f * (xr + s.side * float(s.depth[i])) / d
        col = cv.haze(s.wall[i] * s.light * 0.72, d)
        cv.rect(min(xa, xb), max(xa, xb), cam.hor + cam.f * (cam.h - float(s.height[i])) / d, cam.hor + cam.f * cam.h / d, col, BUILDING)


def _draw_facades(cv: _Canvas, s: _Side) -> None:
    """All buildings on one side in one pass: each column knows its depth, hence its building."""
    cam = cv.cam
    if s.side * (s.side * s.B - cam.x) <= 0.05:
        return
    pw = _plane(cv, s.side * s.B, cam.z, cam.z + FAR_GROUND, float(s.height.max()))
    if pw is None:
        return
    Zc, dc = pw.Z[0], pw.d[0]
    idx = np.clip(np.searchsorted(s.z0, Zc, side="right") - 1, 0, len(s.z0) - 1)
    inside = (Zc >= s.z0[idx]) & (Zc < s.z1[idx])
    hgt = s.height[idx]
    Y = pw.Y
    mask = (Y >= 0) & (Y < hgt) & inside
    if not mask.any():
        return
    # per-column quantities: position along the building, facade metres per column, window columns
    u = Zc - s.z0[idx]
    foot = dc * dc * (1 / (cam.f * abs(pw.xr)))
    pitch, shop = s.pitch[idx], s.shop[idx]
    col_win = (np.abs(_frac(u / pitch) - 0.5) < s.winw[idx] * 0.5) & (foot < pitch / 2.5)
    shop_col = shop & (_frac(u * 0.25) < 0.75) & (foot < 1.5)
    stripes = (_frac(u * 2.0) < 0.5) & (foot < 0.25)
    # per-pixel: storey pattern, shop windows, awnings, cornice, brick mortar
    fv = Y * (1 / s.floor[idx])
    fv -= np.floor(fv)
    glassy = col_win & (fv > 0.3) & (fv < 0.82) & (Y > 3.3) & (Y < hgt - 0.9)
    awn = None
    if shop.any():  # shop fronts: big ground-floor windows under a striped awning
        glassy |= shop_col & (Y > 0.5) & (Y < 2.5)
        awn = shop & (Y >= 2.55) & (Y < 3.1)
    shade = cv.noise(cv.a.smooth, pw.r0, pw.r0 + Y.shape[0], pw.c0, pw.c0 + Y.shape[1], cv.scene.tex_off) * 0.16 + 0.92
    # masked in-place updates: no float64 temporaries from `python_float * bool_array`
    np.subtract(shade, 0.25, out=shade, where=Y > hgt - 0.35)  # cornice
    mortar = s.brick[idx] & (0.28 * cam.f / dc > 4)
    if mortar.any():
        np.subtract(shade, 0.18, out=shade, where=(_frac(Y * (1 / 0.28)) < 0.18) & mortar & ~glassy)
    fv *= 0.5
    fv -= 0.25
    np.add(shade, fv, out=shade, where=glassy)  # sky reflection gradient on glass
    k = np.minimum(dc * (1 / FAR_GROUND), 1.0) ** 1.5 * 0.55  # haze per column
    shade *= 1 - k
    wall, glass = (s.wall[idx] * s.light).T, s.glass[idx].T  # (3, w)
    awn_col = np.where(stripes, s.awning[idx].T, 225.0) if awn is not None else None
    g = glassy.astype(np.float32)
    col = np.empty((3, *Y.shape), np.float32)
    for ch in range(3):  # 2-D ops per channel: much faster than (3, 1, w) x (h, w) broadcasting
        np.multiply(g, glass[ch] - wall[ch], out=col[ch])
        col[ch] += wall[ch]
        if awn_col is not None:
            np.copyto(col[ch], awn_col[ch], where=awn)
        col[ch] *= shade
        col[ch] += cv.scene.haze_col[ch] * k
    cv.paint(pw.r0, pw.c0, mask, col, BUILDING)


# ----------------------------------------------------------------------------- objects


def _screen(cam: _Cam, x: float, d: float) -> tuple[float, float, float]:
    """Ground point (x, depth d) -> (screen x, screen y, pixels per metre)."""
    s = cam.f / d
    return cam.vp + (x - cam.x) * s, cam.hor + cam.h * s, s


def _draw_tree(cv: _Canvas, o: _Obj, d: float, t: int) -> None:
    """Trunk plus a canopy stamped from a precomputed blob mask, resampled to its on-screen size."""
    sx, sy, s = _screen(cv.cam, o.x, d)
    p = o.p
    th, r = p["trunk_h"], p["r"]
    if (th + 2 * r) * s < MIN_PIXELS:
        return
    cv.rect(sx - p["trunk_w"] * s / 2, sx + p["trunk_w"] * s / 2, sy - (th + 0.5 * r) * s, sy, cv.haze(p["trunk"], d), TREE)
    cy = sy - (th + r * 0.8) * s
    ry, rx = _STAMP_EXTENT * r * s, _STAMP_EXTENT * r * s * p["aspect"]
    win = cv.window(sx - rx, sx + rx, cy - ry, cy + ry)
    if win is None:
        return
    r0, c0, ys, xs = win
    S = cv.a.stamps.shape[1]
    st = _sample_stamp(cv.a.stamps[p["stamp"]], (ys[:, 0] - (cy - ry)) * (S / (2 * ry)) - 0.5, (xs[0] - (sx - rx)) * (S / (2 * rx)) - 0.5)
    fine = cv.noise(cv.a.fine, r0, r0 + st.shape[0], c0, c0 + st.shape[1], p["off"])
    # pixel-scale leaf noise on the threshold hides the stamp's upsampling staircase
    mask = st > 0.12 * (fine - 0.5)
    if not mask.any():
        return
    shade = np.maximum(st, 0.75) * (0.8 + 0.4 * fine)  # the interpolated rim would otherwise go dark
    cv.paint(r0, c0, mask, _shaded(cv.haze(p["leaf"], d), shade), TREE)


def _sample_stamp(stamp: np.ndarray, fr: np.ndarray, fc: np.ndarray) -> np.ndarray:
    """Resample a stamp at fractional rows/cols: nearest when shrinking, separable bilinear when
    enlarging (nearest would show the stamp's pixels as staircase edges on near trees)."""
    S = stamp.shape[0]
    if len(fr) <= S:
        ri = np.clip(np.rint(fr).astype(np.intp), 0, S - 1)
        ci = np.clip(np.rint(fc).astype(np.intp), 0, S - 1)
        return stamp.take(ri, 0).take(ci, 1)
    fr, fc = np.clip(fr, 0, S - 1.001), np.clip(fc, 0, S - 1.001)
    r0, c0 = fr.astype(np.intp), fc.astype(np.intp)
    wr, wc = (fr - r0)[:, None], fc - c0
    rows = stamp.take(r0, 0) * (1 - wr) + stamp.take(r0 + 1, 0) * wr  # (h, S)
    return rows.take(c0, 1) * (1 - wc) + rows.take(c0 + 1, 1) * wc


def _draw_pole(cv: _Canvas, o: _Obj, d: float, t: int) -> None:
    sx, sy, s = _screen(cv.cam, o.x, d)
    p = o.p
    if p["h"] * s < MIN_PIXELS:
        return
    col = cv.haze(p["col"], d)
    top = sy - p["h"] * s
    cv.rect(sx - p["w"] * s / 2, sx + p["w"] * s / 2, top, sy, col, POLE)
    if p["arm"] > 0:  # lamp arm reaching over the road
        toward = -1.0 if o.x > 0 else 1.0
        ex = sx + toward * p["arm"] * s
        cv.segment(sx, top + 0.1 * s, ex, top + 0.1 * s, 0.06 * s, col, POLE)
        cv.rect(min(ex, ex - toward * 0.5 * s), max(ex, ex - toward * 0.5 * s), top + 0.05 * s, top + 0.25 * s, col * 0.8 + 30, POLE)


def _draw_sign(cv: _Canvas, o: _Obj, d: float, t: int) -> None:
    sx, sy, s = _screen(cv.cam, o.x, d)
    p = o.p
    if p["h"] * s < MIN_PIXELS:
        return
    c1, c2 = cv.haze(p["c1"], d), cv.haze(p["c2"], d)
    z = p["size"]
    cv.rect(sx - 0.05 * s, sx + 0.05 * s, sy - p["h"] * s, sy, cv.haze(p["post"], d), POLE)
    cy = sy - (p["h"] + z * 0.45) * s
    if p["kind"] == "circle":
        cv.ellipse(sx, cy, z / 2 * s, z / 2 * s, c1, SIGN)
        cv.ellipse(sx, cy, z * 0.36 * s, z * 0.36 * s, c2, SIGN)
    elif p["kind"] == "rect":
        cv.rect(sx - z / 2 * s, sx + z / 2 * s, cy - z * 0.4 * s, cy + z * 0.4 * s, c2, SIGN)
        cv.rect(sx - z * 0.44 * s, sx + z * 0.44 * s, cy - z * 0.34 * s, cy + z * 0.34 * s, c1, SIGN)
    elif p["kind"] == "triangle":
        cv.trapezoid(sx, cy - z * 0.45 * s, cy + z * 0.4 * s, 0.0, z * s, c1, SIGN)
        cv.trapezoid(sx, cy - z * 0.2 * s, cy + z * 0.3 * s, 0.0, z * 0.6 * s, c2, SIGN)
    else:  # traffic light: dark box with one lit lamp
        cv.rect(sx - 0.2 * s, sx + 0.2 * s, cy - 0.55 * s, cy + 0.45 * s, cv.haze(_DARK, d), SIGN)
        for k, lamp in enumerate(_LAMPS):
            cv.ellipse(sx, cy + (-0.3 + 0.3 * k) * s, 0.11 * s, 0.11 * s, cv.haze(lamp * (1.0 if k == p["lit"] else 0.3), d), SIGN)


_DARK = np.array([35, 35, 35], np.float32)
_TYRE = np.array([25, 25, 28], np.float32)
_LAMPS = (np.array([220, 40, 30], np.float32), np.array([230, 170, 30], np.float32), np.array([40, 200, 90], np.float32))
_TAIL = np.array([200, 25, 25], np.float32)
_HEAD = np.array([235, 230, 200], np.float32)
_PLATE = np.array([220, 215, 190], np.float32)


def _draw_fence(cv: _Canvas, o: _Obj, d: float, t: int) -> None:
    """A fence segment on a plane X = const: posts + rails + slats, with gaps that show what is behind."""
    p = o.p
    pw = _plane(cv, o.x, o.z, o.z + p["len"], p["h"])
    if pw is None:
        return
    Y, Zc, h = pw.Y, pw.Z, p["h"]
    foot = pw.d * pw.d * (1 / (cv.cam.f * abs(pw.xr)))  # metres of fence per column
    pxv = pw.d * (1 / cv.cam.f)
    rail = (np.abs(Y - (h - 0.06)) < np.maximum(0.05, pxv)) | (np.abs(Y - 0.45 * h) < np.maximum(0.04, 0.5 * pxv))
    cols = _frac(Zc * (1 / 2.5)) * 2.5 < np.maximum(0.12, foot)  # posts every 2.5 m
    tone = None
    if p["style"] == "panel":
        cols = np.ones_like(cols)
        tone = 1.0 - 0.15 * (_frac(Y * (1 / 0.3)) < 0.2)  # horizontal planks
    else:
        period = 0.14 if p["style"] == "bars" else 0.2
        fill = 0.35 if p["style"] == "bars" else 0.7
        # slats narrower than a pixel would alias: there the fence reads (and is drawn) as solid
        cols |= (_frac(Zc * (1 / period)) < fill) | (foot > 0.5 * period)
    mask = (Y >= 0) & (Y < h) & (rail | cols)
    if not mask.any():
        return
    shade = 0.9 + (0.2 / h) * Y
    if tone is not None:
        shade = shade * tone
    cv.paint(pw.r0, pw.c0, mask, _shaded(cv.haze(p["col"], d), shade), FENCE)


def _draw_car(cv: _Canvas, o: _Obj, d: float, t: int) -> None:
    cam, p = cv.cam, o.p
    dd = max(d, NEAR)
    if p["hgt"] * cam.f / dd < MIN_PIXELS:
        return
    L, Wc, Hc, hb = p["len"], p["wid"], p["hgt"], p["body"]
    z = o.z + o.vz * t
    body, glass, tyre = cv.haze(p["col"], dd), cv.haze(p["glass"], dd), cv.haze(_TYRE, dd)
    # the side that faces the camera, as a plane with windows and wheels
    if o.x - Wc / 2 > cam.x + 0.05:
        _car_side(cv, o.x - Wc / 2, z, L, Hc, hb, body, glass, tyre)
    elif o.x + Wc / 2 < cam.x - 0.05:
        _car_side(cv, o.x + Wc / 2, z, L, Hc, hb, body, glass, tyre)
    if d < NEAR:
        return  # its near end is behind the camera: only the side shows
    sx, sy, s = _screen(cam, o.x, d)
    half = Wc / 2 * s
    # shadow on the ground under the near bumper (keeps the ground label)
    r0, r1 = cv.span(sy - 0.05 * s, sy + 0.12 * s, cv.H)
    c0, c1 = cv.span(sx - half - 0.1 * s, sx + half + 0.1 * s, cv.W)
    if r1 > r0 and c1 > c0:
        lab = cv.lab[r0:r1, c0:c1]
        np.multiply(cv.img[:, r0:r1, c0:c1], 0.55, out=cv.img[:, r0:r1, c0:c1], where=((lab == ROAD) | (lab == PAVEMENT))[None])
    # the end that faces the camera: body, cabin, glass, wheels, bumper, lamps, plate
    cv.rect(sx - half, sx + half, sy - hb * s, sy - 0.18 * s, body, CAR)
    cv.trapezoid(sx, sy - Hc * s, sy - hb * s + 0.5, 0.72 * Wc * s, 0.92 * Wc * s, body * 0.92, CAR)
    cv.trapezoid(sx, sy - (Hc - 0.07) * s, sy - (hb + 0.04) * s, 0.62 * Wc * s, 0.82 * Wc * s, glass, CAR)
    for w0 in (-half, half - 0.28 * s):
        cv.rect(sx + w0, sx + w0 + 0.28 * s, sy - 0.3 * s, sy, tyre, CAR)
    cv.rect(sx - half, sx + half, sy - 0.36 * s, sy - 0.2 * s, body * 0.55, CAR)  # bumper
    lamp = cv.haze(_TAIL if p["facing"] > 0 else _HEAD, d)
    for lx in (-half, half - 0.3 * s):
        cv.rect(sx + lx, sx + lx + 0.3 * s, sy - (hb - 0.05) * s, sy - (hb - 0.2) * s, lamp, CAR)
    cv.rect(sx - 0.25 * s, sx + 0.25 * s, sy - 0.55 * s, sy - 0.42 * s, cv.haze(_PLATE, d), CAR)


def _car_side(cv: _Canvas, X: float, z: float, L: float, Hc: float, hb: float, body: np.ndarray, glass: np.ndarray, tyre: np.ndarray) -> None:
    pw = _plane(cv, X, z, z + L, Hc)
    if pw is None:
        return
    Y, Zc = pw.Y, pw.Z
    u = (Zc - z) * (1 / L)  # (1, w): 0 at the near end, 1 at the far end
    cabin_top = hb + (Hc - hb) * np.clip(np.minimum((u - 0.18) * (1 / 0.14), (0.82 - u) * 10.0), 0, 1)
    rw = 0.32
    zw1, zw2 = z + 0.18 * L, z + 0.82 * L
    ry2 = (Y - rw) ** 2
    wheel = ((Zc - zw1) ** 2 + ry2 < rw * rw) | ((Zc - zw2) ** 2 + ry2 < rw * rw)
    mask = ((Y >= 0.18) & (Y < np.maximum(cabin_top, hb))) | wheel
    if not mask.any():
        return
    win = (Y > hb + 0.06) & (Y < cabin_top - 0.07) & (u > 0.27) & (u < 0.76)
    crease = (np.abs(Y - 0.55) < 0.03) & ~wheel  # a crease line along the doors
    # layered constant paints are cheaper than building a per-pixel colour image
    cv.paint(pw.r0, pw.c0, mask, body * 0.85, CAR)
    for part, colour in ((win, glass), (crease, body * 0.6), (wheel, tyre)):
        if part.any():
            cv.paint(pw.r0, pw.c0, part, colour, CAR)


def _draw_ped(cv: _Canvas, o: _Obj, d: float, t: int) -> None:
    sx, sy, s = _screen(cv.cam, o.x, d)
    p = o.p
    h = p["h"]
    if h * s < MIN_PIXELS:
        return
    pants, shirt, skin = cv.haze(p["pants"], d), cv.haze(p["shirt"], d), cv.haze(p["skin"], d)
    if h * s < 24:  # too small for limbs: a two-tone figure reads the same and costs less
        cv.rect(sx - 0.12 * s, sx + 0.12 * s, sy - 0.5 * h * s, sy, pants, PEDESTRIAN)
        cv.rect(sx - 0.2 * s, sx + 0.2 * s, sy - 0.85 * h * s, sy - 0.5 * h * s, shirt, PEDESTRIAN)
        cv.ellipse(sx, sy - 0.92 * h * s, 0.1 * s, 0.12 * s, skin, PEDESTRIAN)
        return
    ph = p["phase"] + abs(o.vz) * t / 0.7 * math.pi  # one stride per 1.4 m walked
    lift = 0.08 * h * s
    hip, shoulder, wd = sy - 0.5 * h * s, sy - 0.82 * h * s, p["wide"]
    for side, k in ((-1, max(math.sin(ph), 0)), (1, max(-math.sin(ph), 0))):
        cv.segment(sx + side * 0.08 * wd * s, hip, sx + side * 0.1 * wd * s, sy - 0.03 * s - lift * k, 0.065 * s, pants, PEDESTRIAN)
    swing = 0.05 * s * math.sin(ph)
    for side in (-1, 1):
        cv.segment(sx + side * 0.2 * wd * s, shoulder + 0.04 * s, sx + side * 0.24 * wd * s + side * swing, sy - 0.47 * h * s, 0.045 * s, shirt * 0.9, PEDESTRIAN)
    cv.trapezoid(sx, shoulder, hip + 0.04 * s, 0.44 * wd * s, 0.34 * wd * s, shirt, PEDESTRIAN)
    cv.ellipse(sx, sy - 0.91 * h * s, 0.095 * s, 0.115 * s, skin, PEDESTRIAN)
    cv.ellipse(sx, sy - 0.95 * h * s, 0.1 * s, 0.07 * s, cv.haze(p["hair"], d), PEDESTRIAN)


_BIKE_BARS = (((0.35, 0.34), (0.85, 0.34)), ((0.85, 0.34), (0.7, 0.85)), ((0.7, 0.85), (1.25, 0.88)), ((1.25, 0.88), (1.4, 0.34)), ((0.85, 0.34), (1.25, 0.88)))


def _draw_cyclist(cv: _Canvas, o: _Obj, d: float, t: int) -> None:
    """A bike and rider: a cut-out on the plane X = const (seen obliquely) plus the rider's back facing us."""
    cam, p = cv.cam, o.p
    if 1.7 * cam.f / d < MIN_PIXELS:
        return
    z = o.z + o.vz * t
    frame, tyre = cv.haze(p["frame"], d), cv.haze(_TYRE, d)
    shirt, pants, helmet = cv.haze(p["shirt"], d), cv.haze(p["pants"], d), cv.haze(p["helmet"], d)
    ph = p["phase"] + abs(o.vz) * t * 2.0
    pw = _plane(cv, o.x, z, z + 1.75, 1.8)
    if pw is not None:
        U, Y = pw.Z - z, pw.Y
        pxv = float(pw.d.min()) / cam.f
        rw, th = 0.34, max(0.035, 0.6 * pxv)
        ry2 = (Y - rw) ** 2
        wheels = (np.abs(np.sqrt((U - 0.35) ** 2 + ry2) - rw) < th) | (np.abs(np.sqrt((U - 1.4) ** 2 + ry2) - rw) < th)
        bars = np.zeros(Y.shape, bool)
        for a, b in _BIKE_BARS:
            bars |= _seg_dist2(U, Y, a[0], a[1], b[0], b[1]) < th * th
        pedal = (0.85 + 0.16 * math.cos(ph), rw - 0.16 * math.sin(ph))
        leg = _seg_dist2(U, Y, 0.72, 0.95, pedal[0], pedal[1]) < max(0.07, pxv) ** 2
        torso = (_seg_dist2(U, Y, 0.7, 1.0, 1.0, 1.45) < 0.15**2) | (_seg_dist2(U, Y, 1.0, 1.4, 1.25, 0.95) < max(0.045, pxv) ** 2)
        head = (U - 1.08) ** 2 + (Y - 1.65) ** 2 < 0.12**2
        for part, colour in ((bars, frame), (wheels, tyre), (leg, pants), (torso, shirt), (head, helmet)):
            if part.any():
                cv.paint(pw.r0, pw.c0, part, colour, BICYCLIST)
    sx, sy, s = _screen(cam, o.x, max(d + 0.7, NEAR))  # the rider's back sits mid-bike
    cv.rect(sx - 0.03 * s, sx + 0.03 * s, sy - 0.68 * s, sy, tyre, BICYCLIST)
    for side in (-1, 1):
        cv.segment(sx + side * 0.08 * s, sy - 0.95 * s, sx + side * 0.06 * s, sy - (0.45 + side * 0.15 * math.sin(ph)) * s, 0.06 * s, pants, BICYCLIST)
    cv.trapezoid(sx, sy - 1.45 * s, sy - 0.92 * s, 0.42 * s, 0.32 * s, shirt, BICYCLIST)
    cv.ellipse(sx, sy - 1.6 * s, 0.11 * s, 0.12 * s, helmet, BICYCLIST)


def _draw_clutter(cv: _Canvas, o: _Obj, d: float, t: int) -> None:
    sx, sy, s = _screen(cv.cam, o.x, d)
    p = o.p
    if p["h"] * s >= MIN_PIXELS:
        cv.rect(sx - p["w"] / 2 * s, sx + p["w"] / 2 * s, sy - p["h"] * s, sy, cv.haze(p["col"], d), VOID)


_DRAW: dict[str, Callable[[_Canvas, _Obj, float, int], None]] = {
    "tree": _draw_tree, "pole": _draw_pole, "sign": _draw_sign, "fence": _draw_fence, "car": _draw_car,
    "ped": _draw_ped, "cyclist": _draw_cyclist, "clutter": _draw_clutter,
}


def _draw_objects(cv: _Canvas, t: int) -> None:
    """Cull by depth in one vectorised step, then draw the survivors far to near (painter's algorithm)."""
    sc, cam = cv.scene, cv.cam
    d = sc.obj_z + sc.obj_vz * t - cam.z
    visible = (d + sc.obj_reach > NEAR) & (d < FAR_OBJECTS)
    order = np.nonzero(visible)[0]
    for i in order[np.argsort(-d[order], kind="stable")]:
        o = sc.objects[i]
        di = float(d[i])
        # only things that extend along the road (a car beside us, a fence running past) survive
        # the near plane; their drawers clip themselves
        if di >= NEAR or o.kind in ("fence", "car"):
            _DRAW[o.kind](cv, o, max(di, NEAR) if o.kind == "fence" else di, t)


# ----------------------------------------------------------------------------- frame assembly


def _camera(sc: _Scene, H: int, W: int, t: int) -> _Cam:
    return _Cam(f=sc.f_frac * W, hor=sc.hor_frac * H, vp=W * (0.5 + sc.vp_shift), h=sc.cam_h, x=sc.cam_x, z=sc.v_cam * t)


def _render_frame(scene: _Scene, assets: _Assets, scene_seed: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw frame t of a scene: returns (uint8 HxWx3 image, int64 HxW label)."""
    cam = _camera(scene, assets.H, assets.W, t)
    cv = _Canvas(assets, cam, scene)
    _draw_sky(cv, t)
    _draw_skyline(cv)
    _draw_ground(cv)
    for s in scene.sides:
        _draw_end_walls(cv, s)
        _draw_facades(cv, s)
    for o in scene.gap_fences:
        _draw_fence(cv, o, max(o.z - cam.z, NEAR), t)
    _draw_objects(cv, t)
    # exposure and sensor grain; the grain offset changes every frame like real sensor noise
    frng = np.random.default_rng([_LAYOUT_SALT, int(scene_seed), int(t)])
    off = (int(frng.integers(_PAD)), int(frng.integers(_PAD)))
    grain = cv.noise(assets.grain, 0, assets.H, 0, assets.W, off) * scene.grain
    img = cv.img
    img *= scene.exposure
    img += grain[None]
    np.clip(img, 0, 255, out=img)
    return img.transpose(1, 2, 0).astype(np.uint8), cv.lab.astype(np.int64)


# ----------------------------------------------------------------------------- public dataset


def _check_size(size: object) -> tuple[int, int]:
    if not isinstance(size, tuple | list) or len(size) != 2 or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in size):
        raise DataError(f"synthetic size must be (height, width) as two integers, got {size!r}")
    H, W = int(size[0]), int(size[1])
    if not (32 <= H <= 4096 and 32 <= W <= 4096):
        raise DataError(f"synthetic size {H}x{W} (HxW) is out of range; each side must be 32..4096 pixels")
    return H, W


def _check_int(name: str, value: object, lo: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < lo:
        raise DataError(f"synthetic {name} must be an integer >= {lo}, got {value!r}")
    return int(value)


class SyntheticScenes:
    """Procedural driving-scene videos with CamVid labels.

    `frames` frames are grouped into sequences of `sequence_length`: frame i shows time
    i % sequence_length of scene i // sequence_length. Splits draw scenes from disjoint seed ranges,
    so no scene appears in two splits.
    """

    classes = CAMVID
    _CACHE = 8  # scene layouts kept per dataset (frames of a sequence share one)

    def __init__(self, split: str = "train", size: tuple[int, int] = (360, 480), frames: int | None = None, seed: int = 0, sequence_length: int = 30) -> None:
        if split not in SPLITS:
            raise DataError(f"unknown synthetic split {split!r}; valid: {', '.join(SPLITS)}")
        self.split = split
        self.size = _check_size(size)
        self.seed = _check_int("seed", seed, 0)
        self.sequence_length = _check_int("sequence_length", sequence_length, 1)
        self.frames = DEFAULT_FRAMES[split] if frames is None else _check_int("frames", frames, 0)
        self._assets = _Assets.build(*self.size)
        self._layouts: OrderedDict[int, _Scene] = OrderedDict()

    def __len__(self) -> int:
        return self.frames

    @property
    def num_scenes(self) -> int:
        return -(-self.frames // self.sequence_length)

    def scene_seed(self, scene: int) -> int:
        """Seed of scene `scene` of this split: (seed, split) occupy the high bits, so splits never overlap."""
        return ((self.seed * len(SPLITS) + SPLITS.index(self.split)) << 32) | int(scene)

    def __getitem__(self, index: int) -> Sample:
        if not isinstance(index, int | np.integer) or isinstance(index, bool):
            raise TypeError(f"synthetic frames are indexed by int, got {type(index).__name__}")
        i = int(index) + (self.frames if index < 0 else 0)
        if not 0 <= i < self.frames:
            raise IndexError(f"frame {index} out of range for {self.frames} {self.split} frames")
        scene, t = divmod(i, self.sequence_length)
        sample = self.render(self.scene_seed(scene), t)
        sample.name = f"synthetic_{self.split}_{scene:04d}_{t:03d}"
        return sample

    def render(self, scene_seed: int, t: int) -> Sample:
        """Render frame `t` of the scene with `scene_seed` at this dataset's size."""
        scene_seed = _check_int("scene_seed", scene_seed, 0)
        t = _check_int("t", t, 0)
        image, label = _render_frame(self._layout(scene_seed), self._assets, scene_seed, t)
        return Sample(image, label, f"synthetic_{scene_seed:x}_{t:03d}")

    def _layout(self, scene_seed: int) -> _Scene:
        lay = self._layouts.get(scene_seed)
        if lay is None:
            lay = _make_scene(scene_seed, self.sequence_length)
            self._layouts[scene_seed] = lay
            if len(self._layouts) > self._CACHE:
                self._layouts.popitem(last=False)
        else:
            self._layouts.move_to_end(scene_seed)
        return lay


def benchmark_generator(n: int = 50, size: tuple[int, int] = (360, 480)) -> dict:
    """Time the generator in this process: median wall and CPU ms per frame over `n` train frames after 3 warm-ups.

    CPU time is reported too because on a busy machine wall time also measures the other jobs."""
    n = _check_int("n", n, 1)
    ds = SyntheticScenes("train", size=size, frames=n + 3)
    wall, cpu = [], []
    for i in range(n + 3):
        w0, c0 = time.perf_counter(), time.process_time()
        ds[i]
        if i >= 3:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    ms = float(np.median(wall)) * 1000.0
    return {
        "frames_per_s": 1000.0 / ms,
        "ms_per_frame": ms,
        "cpu_ms_per_frame": float(np.median(cpu)) * 1000.0,
        "frames": n,
        "size": list(ds.size),
        "threads": f"1 thread: numpy element-wise ops, no BLAS; {os.cpu_count()} CPUs visible, scale with one generator per DataLoader worker",
    }
