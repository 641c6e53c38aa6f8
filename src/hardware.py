"""Which accelerators this machine has, and one-line errors for those it has not."""

from __future__ import annotations

import torch

ACCELERATOR_DEVICES = {"gpu": ("cuda", "mps"), "cuda": ("cuda",), "mps": ("mps",), "cpu": ("cpu",)}
"""What each accelerator name can run on (Lightning's names; `gpu` is CUDA or Apple's MPS)."""


def available_devices() -> list[str]:
    """The torch device types usable here, e.g. ['cpu'] or ['cpu', 'cuda']."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_accelerator(accelerator: str) -> None:
    """ValueError in one line when `accelerator` names a device this machine lacks."""
    wanted = ACCELERATOR_DEVICES.get(accelerator)
    present = available_devices()
    if wanted is not None and not set(wanted) & set(present):
        raise ValueError(
            f"--accelerator {accelerator}: this machine has no {'/'.join(wanted)} device "
            f"(available: {', '.join(present)}); use --accelerator auto or cpu"
        )


def resolve_device(accelerator: str) -> torch.device:
    """The torch device for `accelerator` (auto: CUDA, then MPS, then CPU)."""
    if accelerator == "auto":
        return torch.device(available_devices()[-1] if len(available_devices()) > 1 else "cpu")
    check_accelerator(accelerator)
    return torch.device(
        next(d for d in ACCELERATOR_DEVICES[accelerator] if d in available_devices())
    )
