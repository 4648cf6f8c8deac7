"""INT8 weight quantization of a loaded model, and how much memory a model holds.

On CPU the decoder's ``nn.Linear`` layers (attention and MLP projections, ~4/5 of
SmolLM2-135M's weights, nearly all of a large model's) become :class:`Int8Linear`: int8
weights with one bfloat16 scale per output channel, multiplied by
``torch._weight_int8pack_mm`` with bfloat16 activations. Only the weights are quantized.

Why weight-only: activations of small code models carry outliers (the MLP's down
projection most of all), and quantizing them per call, as ``torch.ao`` dynamic
quantization does, flipped the first greedy token on 67% of 40 HumanEval infilling
prompts for SmolLM2-135M (KL to float32 1.78 nats) while weight-only int8 flipped 5%
(KL 0.007, no worse than bfloat16's noise). Measured here with 2 threads, a decode step
costs the same as with dynamic quantization (~0.53x float32) and a 100-token prefill
~0.7x float32. The kernel is fast only with bfloat16 activations (with float32 ones it is
5-30x slower than float32), so the rest of the model runs in bfloat16 by default
(``dtype=auto``); ``dtype=float32`` keeps it in float32 and converts at each layer.

Embeddings, norms and the output projection (``lm_head``, tied to the embeddings in
SmolLM2) stay in the model's floating-point dtype: their errors show up directly in the
logits, and quantizing a tied ``lm_head`` would add an int8 copy instead of saving memory.

On CUDA, int8 needs ``bitsandbytes`` (LLM.int8 via transformers); without it loading
fails with a clear message, never silently falling back to another precision.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Literal

import torch
from torch import nn

Quantization = Literal["none", "int8", "int4"]
QUANTIZATIONS: tuple[str, ...] = ("none", "int8", "int4")
# int4 weights: one scale and one offset per group of this many inputs (as GGUF's Q4_1).
INT4_GROUP = 32


def resolve_quantization(quantization: str | None, device: torch.device | None = None
                         ) -> Quantization:
    """Normalise the ``quantization`` option; a bad value names the option and the choices.

    ``auto`` is weight-only int8 on CPU (60-70 % less model memory for at most a point of
    quality, and no slower: see the README's figures) and none elsewhere.
    """
    name = (quantization or "none").strip().lower()
    if name == "auto":
        on_cpu = device is None or device.type == "cpu"
        return "int8" if on_cpu and _int8_kernel_available() else "none"
    if name not in QUANTIZATIONS:
        raise ValueError(
            f"unknown quantization {quantization!r}: expected auto or one of "
            f"{', '.join(QUANTIZATIONS)}"
        )
    return name  # type: ignore[return-value]


def _int8_kernel_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def _int4_kernel_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def int8_cpu_dtype() -> torch.dtype:
    """The dtype ``auto`` means for int8 on CPU: bfloat16 where oneDNN runs it natively."""
    bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.bfloat16 if bf16 is not None and bf16() else torch.float32


def check_quantization(
    quantization: Quantization, device: torch.device, dtype: torch.dtype
) -> None:
    """Refuse combinations that cannot work, before any weights are loaded."""
    if quantization == "none":
        return
    if quantization == "int4":
        if device.type != "cpu":
            raise ValueError(f"quantization='int4' runs on cpu only, not on {device}; use "
                             "int8 or none there")
        if not _int4_kernel_available():  # pragma: no cover - in every recent torch
            raise RuntimeError("quantization='int4' needs torch's _weight_int4pack_mm_for_cpu "
                               f"kernel, which this torch ({torch.__version__}) does not have")
    if device.type == "cpu":
        if dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(
                f"quantization={quantization!r} on CPU needs dtype bfloat16, float32 or auto, "
                f"not {str(dtype).removeprefix('torch.')}: its kernel takes bfloat16 activations"
            )
        if not _int8_kernel_available():  # pragma: no cover - in every torch since 2.3
            raise RuntimeError(
                "quantization='int8' needs torch's _weight_int8pack_mm kernel, "
                f"which this torch ({torch.__version__}) does not have"
            )
        return
    if device.type == "cuda":
        if not bitsandbytes_available():
            raise RuntimeError(
                "quantization='int8' on CUDA needs the bitsandbytes package "
                "(pip install bitsandbytes); it is not installed"
            )
        return
    raise ValueError(f"quantization='int8' is not supported on device {device}; use cpu or cuda")


def bitsandbytes_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


def bnb_int8_config() -> Any:
    """transformers' 8-bit config for CUDA, keeping ``lm_head`` in floating point."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])


def quantizable_linears(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` layers to quantize: all but the output embeddings."""
    skip: set[int] = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if isinstance(out, nn.Module):
        skip.add(id(out))
    return [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and id(module) not in skip and name
    ]


# From this many rows (prefill chunks), dequantizing to bfloat16 and using oneDNN's GEMM
# beats the int8 kernel: measured 1.1-1.8x at 100 rows and 1.7-2.3x at 256 on SmolLM2's
# shapes; below ~48 rows the int8 kernel wins (1.6x at 16 rows).
DEQUANTIZE_ROWS = 64


@functools.lru_cache(maxsize=1)
def _gemm_dtype() -> torch.dtype:
    """bfloat16 where oneDNN runs it natively, else float32 (for dequantized prefill)."""
    return int8_cpu_dtype()


class Int8Linear(nn.Module):
    """A Linear layer with int8 weights and one scale per output channel (symmetric).

    Each weight is rounded to the nearest of 255 levels spanning its row's largest
    magnitude, so the error is at most half a step (0.4% of that magnitude); the scale's
    bfloat16 rounding moves a whole row by at most 0.4% more.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] >= DEQUANTIZE_ROWS:
            # Where bfloat16 GEMMs are emulated (AVX2-only CPUs: 29x slower than float32
            # at 256 rows), the dequantized weight multiplies in float32 instead.
            dt = _gemm_dtype()
            weight = self.weight_int8.to(dt) * self.scales.to(dt)[:, None]
            y = nn.functional.linear(rows.to(dt), weight)
        else:
            # The int8 kernel is fast with bfloat16 rows everywhere (115 us against 3.9 ms
            # with float32 rows for 4 x 576 x 1536 on an AVX2-only CPU).
            y = torch.ops.aten._weight_int8pack_mm(
                rows.to(torch.bfloat16), self.weight_int8, self.scales)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def _apply(self, fn: Any, recurse: bool = True) -> Int8Linear:
        # model.to(dtype) casts every floating buffer; the kernel needs bfloat16 scales.
        super()._apply(fn, recurse)
        self.scales = self.scales.to(torch.bfloat16)
        return self

    def dequantized(self) -> torch.Tensor:
        """The float32 weight this layer multiplies by (for checks and tests)."""
        return self.weight_int8.float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int4Linear(nn.Module):
    """A Linear layer with 4-bit weights, one scale and one offset per group of
    :data:`INT4_GROUP` inputs (asymmetric, as GGUF's Q4_1), multiplied by
    ``torch._weight_int4pack_mm_for_cpu`` with bfloat16 activations.

    Half the bytes of :class:`Int8Linear` per token (a decode step reads every weight:
    30 layers of SmolLM2-135M took 4.8 ms against 9.3-10.4 with int8 on 2 cores). Each
    weight is within half a step, (max - min) / 30 of its group, of its float value: a
    Q4_1 GGUF's own weights come back almost exactly, but a merged LoRA adapter's small
    changes drown in those steps (HumanEval single-line pass@1 21.3 -> 13.4 against int8
    with the default adapter), so ``auto`` never picks it.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        n, k = self.out_features, self.in_features
        groups = linear.weight.detach().float().reshape(n, k // INT4_GROUP, INT4_GROUP)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scale = ((high - low) / 15).clamp(min=1e-8)
        q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
        # The kernel computes (q - 8) * scale + zero, so zero is the value of level 8.
        zero = low + 8 * scale
        self.register_buffer("weight_int4", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.reshape(n, k).to(torch.int32).contiguous(), 1))
        self.register_buffer("scales_and_zeros", torch.stack(
            [scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous())  # [k/G, n, 2]
        self.bias = linear.bias

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        """Whether the kernel takes this shape: whole groups of inputs, outputs by 16."""
        return linear.in_features % INT4_GROUP == 0 and linear.out_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The kernel for every row count: unlike int8's, it beats dequantizing for a
        # prefill chunk too (256 x 576 -> 1536: 8 ms, against 20 for int8's dequantize
        # and GEMM, on 2 busy cores).
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows.to(torch.bfloat16), self.weight_int4, INT4_GROUP, self.scales_and_zeros)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def _apply(self, fn: Any, recurse: bool = True) -> Int4Linear:
        super()._apply(fn, recurse)
        self.scales_and_zeros = self.scales_and_zeros.to(torch.bfloat16)
        return self

    def dequantized(self) -> torch.Tensor:
        """The float32 weight this layer multiplies by (the identity's product; for
        checks and tests, slow)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16,
                        device=self.weight_int4.device)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            eye, self.weight_int4, INT4_GROUP, self.scales_and_zeros).float().t()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int4 (groups of {INT4_GROUP})")


def quantize_cpu(model: nn.Module, bits: int = 8) -> nn.Module:
    """Replace the decoder's Linear layers by :class:`Int8Linear` (``bits`` 8) or
    :class:`Int4Linear` (``bits`` 4; a layer whose shape the int4 kernel does not take
    stays int8), in place."""
    names = quantizable_linears(model)
    if not names:
        raise ValueError(f"quantization='int{bits}': the model has no Linear layers to quantize")
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        linear = getattr(owner, child)
        four = bits == 4 and Int4Linear.fits(linear)
        setattr(owner, child, Int4Linear(linear) if four else Int8Linear(linear))
    return model


def is_int8_linear(module: nn.Module) -> bool:
    """An int8 or int4 (CPU) or bitsandbytes 8-bit (CUDA) linear layer."""
    return (isinstance(module, (Int8Linear, Int4Linear))
            or type(module).__name__ == "Linear8bitLt")


def model_memory_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers (int8 weights and scales are buffers), tied
    tensors counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.nbytes)
        if key not in seen:  # tied weights (SmolLM2's lm_head) count once
            seen.add(key)
            total += t.nbytes
    return total


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights of the quantizable Linear layers (quantized or not)."""
    total = 0
    for name in quantizable_linears(model):
        module = model.get_submodule(name)
        total += module.weight.nbytes
    for module in model.modules():
        if isinstance(module, Int8Linear):
            total += module.weight_int8.nbytes + module.scales.nbytes
        elif isinstance(module, Int4Linear):
            total += module.weight_int4.nbytes + module.scales_and_zeros.nbytes
    return total
