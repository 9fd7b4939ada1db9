"""The NVML-based CUDA check is turned off only where NVML cannot be loaded, and answers stay the same."""

import pytest
import torch

from stagetune.engine import cuda_probe


@pytest.mark.parametrize(("before", "loadable", "after"), [("1", False, "0"), ("1", True, "1"), (None, False, None), ("0", True, "0")])
def test_the_variable_is_turned_off_only_when_nvml_would_fail(monkeypatch, before, loadable, after):
    if before is None:
        monkeypatch.delenv(cuda_probe.VARIABLE, raising=False)
    else:
        monkeypatch.setenv(cuda_probe.VARIABLE, before)
    monkeypatch.setattr(cuda_probe, "nvml_loadable", lambda: loadable)
    cuda_probe.skip_unavailable_nvml_probe()
    assert cuda_probe.os.environ.get(cuda_probe.VARIABLE) == after


def test_cuda_availability_reads_the_same_with_the_check_off(monkeypatch):
    monkeypatch.setenv(cuda_probe.VARIABLE, "1")
    nvml_based = torch.cuda.is_available()
    cuda_probe.skip_unavailable_nvml_probe()
    assert torch.cuda.is_available() == nvml_based
    assert (cuda_probe.os.environ[cuda_probe.VARIABLE] == "0") == (not cuda_probe.nvml_loadable())
