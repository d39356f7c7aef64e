"""Codec errors: every one is a `TandemsegError`, so the CLI prints one line and the cloud answers 4xx.

A parser or decoder in this package never lets an `IndexError`, `struct.error` or a coder panic
escape: whatever is wrong with the bytes becomes one of the classes below with a message that says
what was expected.
"""

from __future__ import annotations

from tandemseg.errors import CheckpointError, TandemsegError


class CodecError(TandemsegError):
    """The codec was used wrongly (entropy tables not built, shapes that do not fit the split)."""


class CodecCheckpointError(CheckpointError, CodecError):
    """A codec checkpoint is missing, corrupt, or was trained against another device checkpoint."""


class BitstreamError(CodecError):
    """A feature bitstream cannot be decoded by this codec."""


class BitstreamTruncated(BitstreamError):
    """The bytes end before the container says they should."""


class BitstreamCorrupt(BitstreamError):
    """The bytes are complete but damaged (checksum, impossible shapes, undecodable symbols)."""


class BitstreamForeign(BitstreamError):
    """Well-formed bytes from another codec, another device checkpoint, or not a feature bitstream at all."""
