"""The wire protocol's messages: what a device uploads and what the cloud returns.

Both links (in-process and HTTP) carry exactly these objects, so offline experiments and real
deployments produce numbers from the same code path. Bytes in `payload` are the real encoded
bytes that would cross the network; every byte count in results comes from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROTOCOL_VERSION = 2  # 2: the `features` payload (JD bitstream container) next to image codecs


@dataclass
class UploadRequest:
    """A frame the device decided to upload (ACDC eq. 10: x_t = {x | u_x > tau_s})."""

    device_id: str
    frame_id: int
    payload: bytes  # the encoded frame (PNG/JPEG/WebP), or a JD feature bitstream container (codec/container.py)
    codec: str  # 'png' | 'jpeg:Q' | 'webp:Q' | 'features'
    height: int  # full-resolution frame size the cloud must predict at
    width: int
    protocol_version: int = PROTOCOL_VERSION
    # What DCAM (ACDC eq. 13-14) needs of the device's view: its coarse class probabilities,
    # uint8-quantised at the coarse resolution, zlib-compressed; None when DCAM is off.
    device_probs: bytes | None = None
    device_probs_shape: tuple[int, int, int] | None = None  # (C, h, w) of device_probs
    u_version: int = 0  # the version of U the device currently holds
    # CFE (ACDC sec. 3.2.3) fuses the cloud's class probabilities, not only its labels: ask for them in the reply
    reply_probs: bool = False

    @property
    def bytes_up(self) -> int:
        return len(self.payload) + len(self.device_probs or b"")


@dataclass
class CloudReply:
    """The cloud's answer to one upload (the device that asked knows who it is: no device id)."""

    frame_id: int
    label_png: bytes  # the fine prediction as an 8-bit PNG label map (compact, lossless)
    u_matrix: np.ndarray | None = None  # the device's new U (C x C) when DCAM changed it
    u_version: int = 0
    cloud_ms: float = 0.0  # cloud-side compute time for this frame
    model_version: int = 0  # the newest weight update the cloud holds for this device (CEMA); 0 = none
    # the cloud's class probabilities at its decoder's resolution (C, h, w), quantised to 4 bits (0..15, one per
    # byte) and zlib-compressed (wire/payload.py pack_probs), when the request asked (CFE's fusion input); else None
    probs: bytes | None = None
    probs_shape: tuple[int, int, int] | None = None

    @property
    def bytes_down(self) -> int:
        return len(self.label_png) + len(self.probs or b"") + (0 if self.u_matrix is None else self.u_matrix.size * 4)
