"""tandemseg: edge-cloud collaborative semantic segmentation.

The device segments every frame with a small model, uploads only what it cannot handle, and
fuses what the cloud returns; the cloud keeps the device calibrated and adapted.
See docs/ARCHITECTURE.md for the data flow and where each paper's method lives.
"""

__version__ = "0.1.0"
