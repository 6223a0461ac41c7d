"""Runtimes: how a loaded model's linear layers hold their weights and compute on the CPU.

- "float32": the GGUF dequantized to float32, as transformers loads it: exact, and 4 bytes read per weight
  at every decoding step.
- "int4": each weight matrix kept as the GGUF's own blocks (`gguf_blocks`): codes of up to 4 bits in one
  int4 pass, codes of 5 or 8 bits split into a low and a high nibble, two int4 passes whose sum is the
  weight (torch's `_weight_int4pack_mm_for_cpu`, groups of 32, bfloat16 activations and scales). Tensors
  not in groups of 32 (Q6_K) go int8 per output channel.
- "int8": every weight matrix int8 per output channel (`_weight_int8pack_mm`), bfloat16 activations.

A decoding step multiplies a few rows (one per answer) by every weight: it is bound by the bytes it reads,
and there the low-bit kernels win (about 4x on a 4864 x 896 layer, one or two rows). With many rows (a
prompt's prefill, a large batch) the work is compute-bound, and these kernels are 2-5x slower than a float32
GEMM on a CPU without AVX-512; so a call with more than a layer's `max_rows` rows multiplies by the exact
float32 weights (dequantized from the same codes, kept in memory) instead. Prefill is then exactly
float32's; decoding a few answers reads a quarter to a half of float32's bytes.

Only the linear layers change: norms, the residual stream, attention scores and softmax stay float32,
and a low-bit layer takes and returns float32, so the ablation hooks (the query projection's output, the
output projection's input) see the same float activations at the same places as in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .gguf_blocks import GROUP, AffineGroups

COMPUTE = torch.bfloat16  # the dtype the CPU kernels are fast in (float32 inputs take a slow path)


class LowBitLinear(nn.Module):
    """y = x W^T + b with W held twice: exact float32 (for many rows) and low-bit (for few rows)."""

    in_features: int
    out_features: int
    weight: torch.Tensor  # (N, K) float32
    bias: torch.Tensor | None
    # Rows up to which a call takes the kernel: measured on a 4864 x 896 layer, 2 cores (AVX2), the float32
    # GEMM catches up with one int4 pass or int8 at about 32 rows, with two int4 passes at about 10.
    max_rows = 32

    def pack(self) -> LowBitLinear:
        raise NotImplementedError

    def low_bit(self, flat: torch.Tensor) -> torch.Tensor:
        """(M, K) bfloat16 -> (M, N) float32 through the low-bit kernel."""
        raise NotImplementedError

    def kernel_bytes(self) -> int:
        """Bytes of weights a call through the kernel reads."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (B * T, K)
        # The kernels have no backward: a gradient (attribution patching) goes through the float32 weights.
        if flat.shape[0] > self.max_rows or (torch.is_grad_enabled() and x.requires_grad):
            y = F.linear(flat.float(), self.weight, self.bias)
        else:
            y = self.low_bit(flat.to(COMPUTE))
            if self.bias is not None:
                y = y + self.bias
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)


class Int4Linear(LowBitLinear):
    """W from affine groups of 32: codes (up to 8 bits) with a float32 scale and offset per group. The kernel
    sums one int4 pass (codes of ≤ 4 bits) or two (a low and a high nibble), each in torch's format:
    w = (c - 8) * scale + zero, scale and zero in bfloat16."""

    # Buffers (registered in __init__, saved in the cache): the GGUF's codes and per-group scale and offset.
    codes: torch.Tensor  # (N, K) uint8
    scale: torch.Tensor  # (N, K / 32) float32
    offset: torch.Tensor  # (N, K / 32) float32

    def __init__(self, in_features: int, out_features: int, bits: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.uint8))
        self.register_buffer("scale", torch.zeros(out_features, in_features // GROUP))
        self.register_buffer("offset", torch.zeros(out_features, in_features // GROUP))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.passes: list[tuple[torch.Tensor, torch.Tensor]] = []  # (packed codes, (K / 32, N, 2) scale, zero)

    @classmethod
    def from_groups(cls, groups: AffineGroups, bias: torch.Tensor | None) -> Int4Linear:
        n, k = groups.codes.shape
        module = cls(k, n, groups.bits, bias is not None)
        module.codes.copy_(torch.from_numpy(groups.codes))
        module.scale.copy_(torch.from_numpy(groups.scale))
        module.offset.copy_(torch.from_numpy(groups.offset))
        if bias is not None:
            cast(torch.Tensor, module.bias).copy_(bias)  # made with a bias buffer just above
        return module.pack()

    def pack(self) -> Int4Linear:
        """The float32 weight and the kernel's passes, from the codes (after building, or loading the cache).
        The kernel's own layout may differ between CPUs, so it is made here, never stored."""
        codes, scale, offset = self.codes, self.scale, self.offset  # (N, K) uint8, (N, K / 32) float32 twice
        n, k = codes.shape
        grouped = codes.view(n, k // GROUP, GROUP).float()
        self.weight = torch.addcmul(offset[..., None], grouped, scale[..., None]).view(n, k)
        if self.bits <= 4:
            parts = [(codes, scale, offset + 8 * scale)]
        else:
            # w = scale * (16 * high + low) + offset. Each pass is centred on zero, codes and zero alike: the
            # kernel rounds each pass's output, and its zeros, to bfloat16, and a large zero cancelling large
            # codes would lose the weight's low bits.
            shift = 8 - (1 << (self.bits - 4)) // 2  # 5 bits: high codes 0..1 sit at 7..8; 8 bits: 0..15 stay
            low_centre = 7.5 * scale
            parts = [
                (codes & 15, scale, 8 * scale - low_centre),
                ((codes >> 4) + shift, 16 * scale, (8 - shift) * 16 * scale + offset + low_centre),
            ]
        self.max_rows = 32 if len(parts) == 1 else 8
        self.passes = [
            (
                torch._convert_weight_to_int4pack_for_cpu(c.to(torch.int32), 1),  # (N, K / 2)
                torch.stack([s.T, z.T], dim=-1).to(COMPUTE).contiguous(),  # (K / 32, N, 2)
            )
            for c, s, z in parts
        ]
        return self

    def low_bit(self, flat: torch.Tensor) -> torch.Tensor:
        # A sum of tensors (there is always at least one pass), not sum()'s start value 0.
        out = sum(torch._weight_int4pack_mm_for_cpu(flat, p, GROUP, sz).float() for p, sz in self.passes)
        return cast(torch.Tensor, out)

    def kernel_bytes(self) -> int:
        return sum(p.numel() * p.element_size() + sz.numel() * sz.element_size() for p, sz in self.passes)


class Int8Linear(LowBitLinear):
    """W int8 with one scale per output channel (row), from the float32 weights."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.qweight = torch.zeros(0, dtype=torch.int8)
        self.scales = torch.zeros(0, dtype=COMPUTE)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int8Linear:
        module = cls(weight.shape[1], weight.shape[0], bias is not None)
        module.weight.copy_(weight)
        if bias is not None:
            cast(torch.Tensor, module.bias).copy_(bias)  # made with a bias buffer just above
        return module.pack()

    def pack(self) -> Int8Linear:
        scales = self.weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (N,)
        self.qweight = torch.round(self.weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.scales = scales.to(COMPUTE)
        return self

    def low_bit(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(flat, self.qweight, self.scales).float()

    def kernel_bytes(self) -> int:
        return self.qweight.numel() + self.scales.numel() * self.scales.element_size()


LowBit = LowBitLinear


def _int4(linear: nn.Linear, groups: AffineGroups | None) -> LowBit:
    if groups is None:
        return Int8Linear.from_float(linear.weight, linear.bias)
    return Int4Linear.from_groups(groups, linear.bias)


def _int8(linear: nn.Linear, groups: AffineGroups | None) -> LowBit:
    return Int8Linear.from_float(linear.weight, linear.bias)


@dataclass(frozen=True)
class Runtime:
    """A way to run the model: its name (as `--runtime` and the app take it) and how a linear layer is
    converted, from its float32 weights and, where the GGUF has them in groups of 32, the file's blocks."""

    name: str
    description: str
    convert: Callable[[nn.Linear, AffineGroups | None], LowBit] | None  # None: float32 as loaded


# Every consumer (the CLI, the app, the cache, the bench) reads this one table.
RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("float32", "the GGUF dequantized to float32: exact, slowest", None),
        Runtime("int4", "the GGUF's own 4/5/8-bit blocks as int4 passes, bfloat16 activations", _int4),
        Runtime("int8", "int8 per output channel, bfloat16 activations", _int8),
    )
}
DEFAULT_CPU_RUNTIME = "int4"


def check_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise ValueError(f"Unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def runtime_help() -> str:
    return f"CPU runtime of an embedded model (default {DEFAULT_CPU_RUNTIME}; float32 reproduces it exactly): " + (
        "; ".join(f"{r.name}: {r.description}" for r in RUNTIMES.values())
    )


def add_runtime(parser) -> None:
    """The `--runtime` option, as every command that loads a model takes it."""
    parser.add_argument("--runtime", choices=list(RUNTIMES), default=None, help=runtime_help())


def empty_like_plan(plan: dict[str, dict]) -> dict[str, LowBit]:
    """Modules of the right shapes for a cache's plan ({module name: its kind and shape}), to load into."""
    modules: dict[str, LowBit] = {}
    for name, spec in plan.items():
        if spec["kind"] == "int4":
            modules[name] = Int4Linear(spec["in"], spec["out"], spec["bits"], spec["bias"])
        else:
            modules[name] = Int8Linear(spec["in"], spec["out"], spec["bias"])
    return modules


def plan_of(module: LowBit) -> dict:
    """What `empty_like_plan` needs to rebuild the module."""
    spec = {"in": module.in_features, "out": module.out_features, "bias": module.bias is not None}
    if isinstance(module, Int4Linear):
        return spec | {"kind": "int4", "bits": module.bits}
    return spec | {"kind": "int8"}


def swap_linears(
    model: nn.Module, runtime: Runtime, groups_of: Callable[[str, nn.Linear], AffineGroups | None]
) -> dict[str, LowBit]:
    """Swap every linear layer for the runtime's, built from its float weights and, where `groups_of` finds
    them, the file's own blocks. Returns the new layers by name."""
    assert runtime.convert is not None, f"{runtime.name} keeps the float layers"
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    new = {name: runtime.convert(m, groups_of(name, m)) for name, m in linears}
    replace_modules(model, new)
    return new


def replace_modules(model: nn.Module, modules: Mapping[str, nn.Module]) -> None:
    """Put each module in place of the one of that name (e.g. `model.layers.3.self_attn.q_proj`)."""
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)
