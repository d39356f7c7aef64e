"""Integer PMF tables as module buffers whose size is only known once they are built.

The tables are computed once (`update()`, before saving) and shipped in the checkpoint, so the
device and the cloud load the very same integers instead of recomputing transcendental functions
that may differ in the last bit between machines.
"""

from __future__ import annotations

from torch import nn


class ResizableTables(nn.Module):
    """A module whose buffers listed in `_table_names` take the shape of whatever a state dict holds."""

    _table_names: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for name in self._table_names:
            key = prefix + name
            if key in state_dict:
                getattr(self, name).resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def table_names(self, prefix: str = "") -> list[str]:
        return [prefix + n for n in self._table_names]
