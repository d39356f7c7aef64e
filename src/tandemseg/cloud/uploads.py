"""The cloud's side of the wire for one upload: decode what the device sent, encode what goes back.

Kept apart from inference (cloud/service.py) so the service is model code only, and so every entry
point (the FastAPI batcher, the Ray replicas, the in-process link) reads uploads the same way.
"""

from __future__ import annotations

import numpy as np

from tandemseg.wire.messages import PROTOCOL_VERSION, CloudReply, UploadRequest
from tandemseg.wire.payload import (
    CLOUD_PROB_LEVELS,
    PayloadError,
    decode_frame,
    encode_label_png,
    pack_probs,
    unpack_probs,
)


def decode_upload(request: UploadRequest) -> np.ndarray:
    """The uploaded frame, RGB uint8 (H, W, 3); PayloadError when the protocol, codec or size disagree."""
    r = request
    if r.protocol_version != PROTOCOL_VERSION:
        raise PayloadError(f"frame {r.frame_id} from {r.device_id} speaks protocol {r.protocol_version}; this cloud speaks {PROTOCOL_VERSION}")
    frame = decode_frame(r.payload, r.codec)
    if frame.shape[:2] != (r.height, r.width):
        raise PayloadError(f"frame {r.frame_id}: payload decodes to {frame.shape[1]}x{frame.shape[0]} but the request says {r.width}x{r.height}")
    return frame


def upload_probs(request: UploadRequest) -> np.ndarray | None:
    """The device's coarse probabilities (C, h, w) float32 that DCAM needs, or None when the upload has none."""
    if request.device_probs is None or request.device_probs_shape is None:
        return None
    return unpack_probs(request.device_probs, request.device_probs_shape)


def encode_prediction(request: UploadRequest, pred: np.ndarray, cloud_ms: float, probs: np.ndarray | None = None) -> CloudReply:
    """The reply to `request`: the fine label map (H, W) as PNG, the frame's share of the compute time and, when the
    request asked (CFE), the class probabilities (C, h, w) at 4 bits (CLOUD_PROB_LEVELS)."""
    reply = CloudReply(request.frame_id, encode_label_png(pred), cloud_ms=cloud_ms)
    if request.reply_probs and probs is not None:
        reply.probs, reply.probs_shape = pack_probs(probs, CLOUD_PROB_LEVELS)
    return reply
