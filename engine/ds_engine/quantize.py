"""INT8 weight quantization of a loaded model, and how much memory a model holds.

On CPU the decoder's ``nn.Linear`` layers (attention and MLP projections, ~2/3 of a small
model's weights, nearly all of a large one's) become int8 with one scale per output
channel; activations are quantized per call (``torch.ao`` dynamic quantization, fbgemm
kernels). Measured here on SmolLM2 shapes with one thread, a decode-step matmul is 1.3-3x
faster than float32 and prefill 3-4x faster, while the alternatives in torch 2.13 were far
slower (``torch._weight_int8pack_mm`` is 10-50x slower than float32 on this CPU,
dequantizing in ``forward`` slower still), so dynamic quantization is the method used.

Embeddings, norms and the output projection (``lm_head``, tied to the embeddings in
SmolLM2) stay in floating point: they are a small share of the compute, their errors
show up directly in the logits, and quantizing a tied ``lm_head`` would add an int8 copy
instead of saving memory.

On CUDA, int8 needs ``bitsandbytes`` (LLM.int8 via transformers); without it loading
fails with a clear message, never silently falling back to another precision.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import nn

Quantization = Literal["none", "int8"]
QUANTIZATIONS: tuple[str, ...] = ("none", "int8")


def resolve_quantization(quantization: str | None) -> Quantization:
    """Normalise the ``quantization`` option; a bad value names the option and the choices."""
    name = (quantization or "none").strip().lower()
    if name not in QUANTIZATIONS:
        raise ValueError(
            f"unknown quantization {quantization!r}: expected one of {', '.join(QUANTIZATIONS)}"
        )
    return name  # type: ignore[return-value]


def check_quantization(
    quantization: Quantization, device: torch.device, dtype: torch.dtype
) -> None:
    """Refuse combinations that cannot work, before any weights are loaded."""
    if quantization == "none":
        return
    if device.type == "cpu":
        if dtype != torch.float32:
            raise ValueError(
                f"quantization='int8' on CPU needs dtype float32 (or auto), not "
                f"{str(dtype).removeprefix('torch.')}: int8 layers take float32 activations"
            )
        if not hasattr(torch.ao.quantization, "quantize_dynamic"):  # pragma: no cover
            raise RuntimeError(
                "quantization='int8' needs torch.ao.quantization.quantize_dynamic, "
                f"which this torch ({torch.__version__}) no longer has"
            )
        if "fbgemm" not in torch.backends.quantized.supported_engines and (
            "x86" not in torch.backends.quantized.supported_engines
        ):  # pragma: no cover - every x86 wheel has fbgemm
            raise RuntimeError("quantization='int8' needs torch's fbgemm/x86 quantized engine")
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


def quantize_int8_cpu(model: nn.Module) -> nn.Module:
    """Replace the decoder's Linear layers by int8 dynamic-quantized ones, in place."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = quantizable_linears(model)
    if not names:
        raise ValueError("quantization='int8': the model has no Linear layers to quantize")
    with warnings.catch_warnings():
        # torch.ao is deprecated in favour of torchao, which is not installed; it works.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, inplace=True)
    return model


def is_int8_linear(module: nn.Module) -> bool:
    """A dynamic-quantized (CPU) or bitsandbytes 8-bit (CUDA) linear layer."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    if isinstance(module, DynamicLinear):
        return True
    return type(module).__name__ == "Linear8bitLt"


def _tensor_bytes(t: torch.Tensor) -> int:
    if t.is_quantized:
        n = t.numel() * t.element_size()
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales, zeros = t.q_per_channel_scales(), t.q_per_channel_zero_points()
            n += scales.numel() * scales.element_size() + zeros.numel() * zeros.element_size()
        else:
            n += 16  # one float64 scale, one int64 zero point
        return n
    return t.numel() * t.element_size()


def model_memory_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers, tied tensors once, packed int8 weights too.

    Dynamic-quantized layers keep their weight in an opaque packed object, not a
    parameter, so ``parameters()`` alone would count them as zero.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    seen: set[tuple[int, int]] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.nbytes)
        if key in seen:  # tied weights (SmolLM2's lm_head) count once
            return
        seen.add(key)
        total += _tensor_bytes(t)

    for p in model.parameters():
        add(p)
    for b in model.buffers():
        add(b)
    for module in model.modules():
        if isinstance(module, DynamicLinear):
            # unpacked copies, fresh on each call: counted directly, never deduplicated
            for t in module._weight_bias():
                if t is not None:
                    total += _tensor_bytes(t)
    return total


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights of the quantizable Linear layers (quantized or not)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    total = 0
    skip = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if isinstance(out, nn.Module):
        skip.add(id(out))
    for module in model.modules():
        if id(module) in skip:
            continue
        if isinstance(module, DynamicLinear):
            total += _tensor_bytes(module._weight_bias()[0])
        elif type(module) is nn.Linear:
            total += _tensor_bytes(module.weight)
    return total
