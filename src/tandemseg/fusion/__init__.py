"""ACDC's Collaborative Fusion Engine (paper 000, sec. 3.2.3, eq. 15; docs/methods/fusion.md).

    config.py      FusionConfig: which refiner, its size, the eq. 12 mask, the working resolution
    refiners.py    M_u: sparse (submanifold 3x3 at the masked pixels), point head (PointRend-style), dense U-Net
    engine.py      CollaborativeFusion: mask (eq. 11-12) -> refine (eq. 15) -> dual-granularity fusion
    checkpoint.py  weights + card, bound to the device checkpoint it was trained on

The runtime step that uses it is `FusionStep` in device/steps.py; training is train/fusion.py.
"""
