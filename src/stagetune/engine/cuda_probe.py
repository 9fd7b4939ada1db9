"""Keep torch's CUDA probe cheap on machines without an NVIDIA driver.

Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` on import so that asking whether CUDA is
available does not initialise CUDA before DataLoader workers fork. torch's optimizers ask that
question on every ``step()`` (``torch.accelerator.current_accelerator()``), and with the variable
set each answer first tries to load ``libnvidia-ml.so.1``. Where that library does not exist (a
CPU-only machine) every step pays a failed ``dlopen`` (about 0.3 ms, a tenth of a ratings step
here) and then falls back to the same CUDA-runtime query it would have made without the variable.
So where NVML cannot be loaded the variable protects nothing, and it is turned off.
"""

from __future__ import annotations

import ctypes
import os

VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"
NVML = "libnvidia-ml.so.1"


def nvml_loadable() -> bool:
    try:
        ctypes.CDLL(NVML)
    except OSError:
        return False
    return True


def skip_unavailable_nvml_probe() -> None:
    """Turn the NVML-based check off when NVML cannot be loaded (it would fail on every call)."""
    if os.environ.get(VARIABLE) == "1" and not nvml_loadable():
        os.environ[VARIABLE] = "0"
