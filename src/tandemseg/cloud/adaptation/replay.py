"""The replay buffer of CEMA's distillation: uploaded frames kept for later steps, bounded in frames and bytes."""

from __future__ import annotations

import numpy as np


class ReplayBuffer:
    """uint8 RGB frames; `fifo` evicts the oldest, `reservoir` keeps a uniform sample of everything seen
    (Vitter's algorithm R). Both bounds hold after every `add`."""

    def __init__(self, max_frames: int, max_bytes: int, eviction: str = "fifo", seed: int = 0) -> None:
        if eviction not in ("fifo", "reservoir"):
            raise ValueError(f"eviction is fifo or reservoir, got {eviction!r}")
        self.max_frames, self.max_bytes, self.eviction = max_frames, max_bytes, eviction
        self.frames: list[np.ndarray] = []
        self.nbytes = 0
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.frames)

    def add(self, frame: np.ndarray) -> None:
        if frame.nbytes > self.max_bytes:
            return  # a frame larger than the whole buffer is never kept
        self.seen += 1
        if self.eviction == "reservoir" and len(self.frames) >= self.max_frames:
            j = int(self.rng.integers(self.seen))
            if j < len(self.frames):
                self._replace(j, frame)
            return
        self.frames.append(frame)
        self.nbytes += frame.nbytes
        while len(self.frames) > self.max_frames or self.nbytes > self.max_bytes:
            self.nbytes -= self.frames.pop(0).nbytes

    def _replace(self, j: int, frame: np.ndarray) -> None:
        self.nbytes += frame.nbytes - self.frames[j].nbytes
        self.frames[j] = frame
        while self.nbytes > self.max_bytes and len(self.frames) > 1:
            self.nbytes -= self.frames.pop(0).nbytes

    def sample(self, k: int) -> list[np.ndarray]:
        """Up to k distinct frames, uniformly."""
        if k <= 0 or not self.frames:
            return []
        idx = self.rng.choice(len(self.frames), size=min(k, len(self.frames)), replace=False)
        return [self.frames[int(i)] for i in idx]
