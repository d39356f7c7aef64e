"""tandemseg: edge-cloud collaborative semantic segmentation.

The device segments every frame with a small model (or a multi-exit one whose confident early exits
answer on the device, MESS), scores how unsure it is (ACDC's uncertainty matrix U, or a baseline
policy), and uploads the frames a budget controller lets through, as an image or as entropy-coded
split features (JD); the final map of an uploaded frame is the cloud's (or, with ACDC's CFE, the cloud's
fused with the device's refined map), of any other frame the device's own (refined where it is unsure).
The cloud segments uploads with a large model (or JD's joint decoder), served in-process, over HTTP
(FastAPI) or on Ray Serve, keeps each device's U current from its uploads (DCAM) and can adapt the
device's weights (CEMA). One runtime (device/runtime.py) processes every frame on every path.
See docs/ARCHITECTURE.md for the data flow and where each paper's method lives.
"""

__version__ = "0.1.0"
