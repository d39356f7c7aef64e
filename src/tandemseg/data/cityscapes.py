"""STUB — to be replaced (helper C)."""
class Cityscapes:
    def __init__(self, root, split="train") -> None:
        raise NotImplementedError
