"""STUB — to be replaced (helper C)."""
class FolderDataset:
    def __init__(self, root, split="train") -> None:
        raise NotImplementedError
