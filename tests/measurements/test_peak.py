"""The catalog's peak for a CUDA device name, as the timing section's fraction of peak reads it."""

from __future__ import annotations

import pytest

from workbench.measurements.peak import catalog_device_for, peak_flops
from workbench.settings import get_device


@pytest.mark.parametrize(
    "cuda_name,expected",
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),  # the SXM part reports no "SXM": the alias "h100"
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40S", "l40s"),  # not l4: parts are whole words
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("Tesla T4", "t4"),
        ("AMD Instinct MI300X", "mi300x"),
    ],
)
def test_cuda_names_find_their_catalog_entry(cuda_name: str, expected: str) -> None:
    device = catalog_device_for(cuda_name)
    assert device is not None and device.name == expected


def test_unknown_gpus_and_the_cpu_have_no_peak() -> None:
    assert catalog_device_for("Some Future Accelerator") is None
    assert peak_flops("cpu", "float32") is None


def test_the_peak_follows_the_dtype(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    h100 = get_device("h100-sxm")
    assert peak_flops("cuda:0", "bfloat16") == h100.peak_16bit_flops_per_second
    assert peak_flops("cuda:0", "float32") == h100.fp32_flops_per_second
