"""The cloud service as plain methods (no HTTP): segment uploads in one batched forward per frame size,
and keep each device's U up to date with DCAM (ACDC eq. 13-14).

The service itself is inference; it hands the wire to cloud/uploads.py (decode the frame, encode the
label map), DCAM to cloud/dcam.py (`Dcam`: evidence per frame, eq. 14 blend) and the per-device state to
cloud/states.py (one store, also used by the Ray deployment). The HTTP layer (cloud/app.py) and the
request batcher call `segment_batch` from worker threads; the in-process link (device/link.py) calls it
directly; a Ray replica calls the stateless `segment` and leaves the state to its own store.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
import torch
from torch import nn

from tandemseg.cloud.adaptation.service import AdaptationService
from tandemseg.cloud.dcam import Dcam, DcamEvidence, DcamSettings
from tandemseg.cloud.states import DeviceStateStore
from tandemseg.cloud.uploads import decode_upload, encode_prediction, upload_probs
from tandemseg.codec.bitstream import decode_bitstream
from tandemseg.codec.model import FeatureCodec
from tandemseg.data.classes import ClassTable
from tandemseg.data.tensors import to_tensor
from tandemseg.heap import HeapTrimmer
from tandemseg.models.blocks import resize
from tandemseg.wire.messages import CloudReply, UploadRequest
from tandemseg.wire.payload import FEATURES, PayloadError
from tandemseg.wire.weights import UpdateMessage

Predictions = tuple[list[np.ndarray], list[float], list[np.ndarray | None]]


class Segmenter(Protocol):
    """The service's inference step: label maps for a batch of uploads."""

    def predict(self, requests: list[UploadRequest]) -> Predictions:
        """(H, W) uint8 label maps, one per request, each request's share of the compute ms, and the class
        probabilities (C, h, w) at the model's own resolution for the requests that asked (`reply_probs`), else None."""
        ...


class ModelSegmenter:
    """The cloud's inference: image uploads are decoded and run through the cloud model (one batched forward per
    distinct frame size); feature uploads (JD) go through `feature_codec`'s joint decoder straight from the
    bitstream, when the service has one."""

    def __init__(self, model: nn.Module, feature_codec: FeatureCodec | None = None) -> None:
        self.model = model.eval()
        self.feature_codec = feature_codec.eval() if feature_codec is not None else None

    def predict(self, requests: list[UploadRequest]) -> Predictions:
        preds: list[np.ndarray] = [np.empty(0)] * len(requests)
        probs: list[np.ndarray | None] = [None] * len(requests)
        cloud_ms = [0.0] * len(requests)
        groups: dict[tuple[int, int], list[int]] = {}
        frames: dict[int, np.ndarray] = {}
        for i, r in enumerate(requests):
            if r.codec == FEATURES:
                preds[i], cloud_ms[i], probs[i] = self._decode_features(r)
            else:
                frames[i] = decode_upload(r)
                groups.setdefault(frames[i].shape[:2], []).append(i)
        for idx in groups.values():
            t0 = time.perf_counter()
            with torch.inference_mode():
                x = to_tensor([frames[i] for i in idx])  # (n, 3, H, W)
                coarse = self.model.forward_coarse(x)  # (n, C, h, w): what model(x) upsamples
                labels = resize(coarse, x.shape[-2:]).argmax(1).to(torch.uint8).numpy()  # (n, H, W)
                for j, i in enumerate(idx):
                    probs[i] = coarse[j].float().softmax(0).numpy() if requests[i].reply_probs else None  # (C, h, w)
            ms = (time.perf_counter() - t0) * 1e3 / len(idx)
            for j, i in enumerate(idx):
                preds[i], cloud_ms[i] = labels[j], ms
        return preds, cloud_ms, probs

    def _decode_features(self, request: UploadRequest) -> tuple[np.ndarray, float, np.ndarray | None]:
        """JD: bitstream -> exact latents -> joint decoder -> label map; BitstreamError for foreign or damaged bytes."""
        if self.feature_codec is None:
            raise PayloadError(f"frame {request.frame_id} carries JD features but this cloud has no feature codec; "
                               "start it with `tandemseg serve --codec-ckpt DIR` (the codec trained for your device)")
        t0 = time.perf_counter()
        logits, stream = decode_bitstream(self.feature_codec, request.payload)  # (1, S, H, W)
        if tuple(stream.frame_hw) != (request.height, request.width):
            raise PayloadError(f"frame {request.frame_id}: the bitstream is for {stream.frame_hw} but the request says {request.height}x{request.width}")
        label = logits.argmax(1)[0].to(torch.uint8).numpy()  # (H, W)
        probs = None
        if request.reply_probs:  # the joint decoder predicts at full size; the reply carries it at /4, as images get it
            h, w = logits.shape[-2:]
            probs = torch.nn.functional.interpolate(logits.softmax(1), size=(max(1, h // 4), max(1, w // 4)), mode="area")[0].numpy()
        return label, (time.perf_counter() - t0) * 1e3, probs


class CloudService:
    """The cloud behind the wire: a Segmenter (`ModelSegmenter(model)`; offline replays answer from a cache,
    eval/replay.py), DCAM and the per-device states. `dcam_settings` should follow the device U's fit
    (DcamSettings.from_meta)."""

    def __init__(
        self, segmenter: Segmenter, classes: ClassTable, dcam_alpha: float = 0.0, initial_u: np.ndarray | None = None,
        dcam_settings: DcamSettings | None = None, adaptation: AdaptationService | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.adaptation = adaptation
        self.classes = classes
        self.dcam = Dcam(dcam_alpha, dcam_settings or DcamSettings(), classes.ignore_index)
        self.states = DeviceStateStore(classes.num_classes, initial_u, self.dcam)
        self._heap = HeapTrimmer()  # a long-running server gives freed activation pages back (every 16 batches)

    def device_state(self, device_id: str) -> dict:
        return self.states.get(device_id)

    def set_uncertainty(self, device_id: str, u: np.ndarray, version: int = 0) -> None:
        """Register (or reset) a device's U, e.g. when a device announces the matrix it was shipped with."""
        self.states.set(device_id, u, version)

    def segment(self, requests: list[UploadRequest]) -> list[tuple[CloudReply, DcamEvidence | None]]:
        """Segment (the Segmenter decodes), encode; with each reply its DCAM evidence.
        Touches no per-device state, so any replica can run it."""
        preds, cloud_ms, probs = self.segmenter.predict(requests)
        return [(encode_prediction(r, pred, ms, p), self.dcam.evidence(upload_probs(r), pred))
                for r, pred, ms, p in zip(requests, preds, cloud_ms, probs, strict=True)]

    def segment_batch(self, requests: list[UploadRequest]) -> list[CloudReply]:
        """`segment`, then each device's DCAM update; a reply carries U when the device's copy is stale."""
        replies = []
        for r, (reply, evidence) in zip(requests, self.segment(requests), strict=True):
            u, version = self.states.record(r.device_id, r.u_version, evidence)
            reply.u_matrix, reply.u_version = u, version
            replies.append(reply)
        self._heap.tick()
        if self.adaptation is not None:  # after the replies exist: adaptation never delays them (queued or, offline, inline)
            for r, reply in zip(requests, replies, strict=True):
                self.adaptation.submit(r)
                reply.model_version = self.adaptation.version(r.device_id)
        return replies

    def model_update(self, device_id: str, since: int = 0) -> UpdateMessage | None:
        """CEMA's weight push: the device's adapted tensors newer than `since` (None: nothing newer, or no adaptation)."""
        return None if self.adaptation is None else self.adaptation.update(device_id, since)
