"""STUB — to be replaced by the synthetic-scene generator (helper A)."""
from tandemseg.data.classes import CAMVID


class SyntheticScenes:
    classes = CAMVID

    def __init__(self, split: str = "train", **kw) -> None:
        raise NotImplementedError
