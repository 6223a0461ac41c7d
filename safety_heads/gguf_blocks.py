"""A GGUF file's quantized blocks read as affine groups of 32 weights: w = scale * code + offset, exactly.

llama.cpp's 4-, 5- and 8-bit formats store 32 weights per block with one scale (and a minimum, or a fixed
offset); a Q4_K super-block of 256 holds eight sub-blocks of 32, each with its own 6-bit scale and minimum.
Read so, every such tensor is integer codes (0 .. 2**bits - 1) with one (scale, offset) pair per 32 weights
along a row: the form the CPU's int4 kernels take, so the runtime holds the file's weights without a second
rounding (up to the precision of the kernel's scales). Q6_K's sub-blocks are 16 wide, finer than the
kernels' smallest group of 32: it is not read here (`decode` returns None), nor is any other format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf.quants import Q4_K

GROUP = 32  # weights per (scale, offset) pair


@dataclass
class AffineGroups:
    """A weight matrix (N rows of K) as integer codes and one (scale, offset) per 32 weights of a row."""

    codes: np.ndarray  # (N, K) uint8, 0 .. 2**bits - 1
    scale: np.ndarray  # (N, K // 32) float32
    offset: np.ndarray  # (N, K // 32) float32
    bits: int

    def dequantize(self) -> np.ndarray:
        n, k = self.codes.shape
        grouped = self.codes.reshape(n, k // GROUP, GROUP).astype(np.float32)
        return (grouped * self.scale[..., None] + self.offset[..., None]).reshape(n, k)

    def permute_rows(self, permute) -> AffineGroups:
        """The same weights with rows reordered by `permute` (an (N, ...) -> (N, ...) array function)."""
        return AffineGroups(permute(self.codes), permute(self.scale), permute(self.offset), self.bits)


def _f16(raw: np.ndarray) -> np.ndarray:
    """(n, 2) bytes -> (n,) float32."""
    return raw.copy().view(np.float16).astype(np.float32)[:, 0]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) codes: ggml puts weights 0..15 in the low nibbles and 16..31 in the high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes, a little-endian bit per weight -> (n, 32) values 0 or 16."""
    return np.unpackbits(qh, axis=-1, bitorder="little") << 4


def _blocks(data: np.ndarray, n: int, k: int) -> np.ndarray:
    """(N, row bytes) -> (N * K / 32, block bytes)."""
    return data.reshape(n * (k // GROUP), -1)


def _q4_k(data: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    blocks = data.reshape(n * (k // 256), 144)  # d (2), dmin (2), 8 scales and 8 mins (12), codes (128)
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mins = Q4_K.get_scale_min(blocks[:, 4:16])  # (n_blocks, 8) each, 6-bit integers
    qs = blocks[:, 16:].reshape(-1, 4, 32)  # 64 weights per 32 bytes: sub-block 2j low, 2j+1 high
    codes = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, k)
    scale = (d[:, None] * sc.astype(np.float32)).reshape(n, k // GROUP)
    offset = -(dmin[:, None] * mins.astype(np.float32)).reshape(n, k // GROUP)
    return codes, scale, offset


def decode(data: np.ndarray, qtype: Q, n: int, k: int) -> AffineGroups | None:
    """The tensor's raw rows ((N, row bytes) uint8, as `GGUFReader` gives them) as affine groups, or None
    for a format that does not come in groups of 32 (Q6_K, floats and the rest)."""
    if qtype == Q.Q4_K:
        codes, scale, offset = _q4_k(data, n, k)
        return AffineGroups(codes, scale, offset, 4)
    layouts = {Q.Q4_0: 18, Q.Q4_1: 20, Q.Q5_0: 22, Q.Q5_1: 24, Q.Q8_0: 34}  # bytes per block of 32
    if qtype not in layouts or k % GROUP:
        return None
    b = _blocks(data, n, k)
    assert b.shape[1] == layouts[qtype], (qtype, b.shape)
    d = _f16(b[:, 0:2])
    if qtype == Q.Q4_0:  # d, 16 bytes of nibbles; w = d * (q - 8)
        codes, offset, bits = _nibbles(b[:, 2:]), -8 * d, 4
    elif qtype == Q.Q4_1:  # d, m, nibbles; w = d * q + m
        codes, offset, bits = _nibbles(b[:, 4:]), _f16(b[:, 2:4]), 4
    elif qtype == Q.Q5_0:  # d, 32 fifth bits, nibbles; w = d * (q - 16)
        codes, offset, bits = _nibbles(b[:, 6:]) | _fifth_bits(b[:, 2:6]), -16 * d, 5
    elif qtype == Q.Q5_1:  # d, m, fifth bits, nibbles; w = d * q + m
        codes, offset, bits = _nibbles(b[:, 8:]) | _fifth_bits(b[:, 4:8]), _f16(b[:, 2:4]), 5
    else:  # Q8_0: d, 32 signed bytes; w = d * q, stored here as d * (code - 128)
        codes, offset, bits = (b[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8), -128 * d, 8
    groups = k // GROUP
    return AffineGroups(codes.reshape(n, k), d.reshape(n, groups), offset.reshape(n, groups), bits)
