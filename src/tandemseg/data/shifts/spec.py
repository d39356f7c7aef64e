"""STUB — to be replaced (helper B)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Shift:
    name: str
    severity: int = 0


def parse_shift(text: str) -> "Shift | None":
    if text in ("clean", "", None):
        return None
    raise NotImplementedError


class ShiftedDataset:
    def __init__(self, dataset, shift, seed=0) -> None:
        raise NotImplementedError
