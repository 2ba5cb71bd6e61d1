"""The device's peak FLOP/s from the catalog, for the timing section's fraction of peak.

A torch device string (``cuda:0``) is matched to a catalog entry by the name CUDA reports for it
(``NVIDIA H100 80GB HBM3`` -> ``h100-sxm``): every dash-separated part of a catalog name or alias
must be a word of the CUDA name, and the entry matching the most parts wins. The CPU has no
peak in the catalog, so CPU runs report no fraction.
"""

from __future__ import annotations

import re

import torch

from workbench.settings import Device, get_device, list_devices

SIXTEEN_BIT = {"float16", "fp16", "bfloat16", "bf16"}


def catalog_device_for(cuda_name: str) -> Device | None:
    """The catalog entry whose name or alias matches ``cuda_name`` best (None: no match)."""
    words = set(re.split(r"[^a-z0-9]+", cuda_name.lower())) - {""}
    best, best_parts = None, 0
    for name in list_devices():
        device = get_device(name)
        for label in (device.name, *device.aliases):
            parts = label.lower().split("-")
            if all(part in words for part in parts) and len(parts) > best_parts:
                best, best_parts = device, len(parts)
    return best


def peak_flops(device: str, dtype: str) -> float | None:
    """Peak FLOP/s of the torch ``device`` at ``dtype`` (16-bit tensor peak or FP32), or None."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    entry = catalog_device_for(torch.cuda.get_device_name(torch.device(device)))
    if entry is None:
        return None
    return entry.peak_16bit_flops_per_second if dtype in SIXTEEN_BIT else entry.fp32_flops_per_second
