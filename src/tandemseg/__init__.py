"""tandemseg: edge-cloud collaborative semantic segmentation.

The device segments every frame with a small model, scores how unsure it is (ACDC's uncertainty
matrix U, or a baseline policy), and uploads the frames a budget controller lets through; the final
map of an uploaded frame is the cloud's, of any other frame the device's own. The cloud segments
uploads with a large model, served in-process, over HTTP (FastAPI) or on Ray Serve, and keeps each
device's U current from its uploads (DCAM). `tandemseg collab` measures what offloading buys.
Not here yet: fusion of device and cloud maps, coded features, weight adaptation, multi-exit models.
See docs/ARCHITECTURE.md for the data flow and where each paper's method lives.
"""

__version__ = "0.1.0"
