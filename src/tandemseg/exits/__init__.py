"""Multi-exit semantic segmentation (MESS, Kouris et al., ECCV 2022; paper 003) on tandemseg's segmenters.

    heads.py       the exit search space of eq. 1 (ExitSpec, build_exit)
    network.py     MultiExitSegmenter: exits on encoder stages; budgeted, anytime, input-dependent inference
    costs.py       per-stage FLOPs, exit placement (sec. 4.1), GFLOPs and latency tables (Table 1's terms)
    confidence.py  image-level confidence, eq. 7-9 (shared with the device's `confidence` upload policy)
    losses.py      exit-dropout (eq. 2), PFD (eq. 3), CE and KD baselines
    train.py       stage 1 (exit-aware pre-training) and stage 2 (frozen backbone) steps
    calibrate.py   cached per-exit predictions on a calibration split
    search.py      exhaustive configuration search (eq. 4-6) and the Pareto front
    export.py      ONNX graphs of exit segments with parity checks

Submodules are imported where they are used; this package file imports nothing, so `device/` can import
`tandemseg.exits.confidence` without the network, search or ONNX code.
"""
