"""Feature transmission (JD, Nazir et al., ECCV 2024): entropy-coded split features and a joint decoder.

    device: frame -> E (split stage) -> z -> SE -> r -> round -> range coder -> b_r
                                               -> HE -> h -> round -> range coder -> b_h
    cloud:  b_h -> h_hat -> HD (exact integers) -> sigma -> b_r -> r_hat -> JD -> class logits

See docs/methods/codec.md for the architecture and the choices made where the paper is silent.
"""

from tandemseg.codec.bitstream import decode_bitstream, encode_frames
from tandemseg.codec.checkpoint import (
    CodecCheckpoint,
    codec_fingerprint,
    device_fingerprint,
    load_codec,
    save_codec,
)
from tandemseg.codec.config import CodecConfig
from tandemseg.codec.container import FeatureBitstream, pack, unpack
from tandemseg.codec.errors import (
    BitstreamCorrupt,
    BitstreamError,
    BitstreamForeign,
    BitstreamTruncated,
    CodecCheckpointError,
    CodecError,
)
from tandemseg.codec.loss import RDLoss, rate_bits, rd_loss, train_step
from tandemseg.codec.model import CodecOutput, CodedFeatures, FeatureCodec
from tandemseg.codec.pipeline import SplitCodec
from tandemseg.codec.split import resolve_config, resolve_split, split_features

__all__ = [
    "BitstreamCorrupt", "BitstreamError", "BitstreamForeign", "BitstreamTruncated", "CodecCheckpoint",
    "CodecCheckpointError", "CodecConfig", "CodecError", "CodecOutput", "CodedFeatures", "FeatureBitstream",
    "FeatureCodec", "RDLoss", "SplitCodec", "codec_fingerprint", "decode_bitstream", "device_fingerprint",
    "encode_frames", "load_codec", "pack", "rate_bits", "rd_loss", "resolve_config", "resolve_split",
    "save_codec", "split_features", "train_step", "unpack",
]
