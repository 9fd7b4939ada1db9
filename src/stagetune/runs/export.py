"""A trained run's model written as TorchScript or ONNX, and checked against the checkpoint on sample inputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from stagetune.errors import StagetuneError
from stagetune.runs.outputs import output_file
from stagetune.runs.trained import Trained

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}


TOLERANCE = 1e-5


def sample_inputs(trained: Trained, n: int = 8) -> tuple[torch.Tensor, ...]:
    """The first ``n`` examples of the run's validation data, without the target (the batch's last element)."""
    trained.datamodule.setup("validate")
    batch = next(iter(trained.datamodule.val_dataloader()))
    return tuple(t[:n].to(trained.device) for t in batch[:-1])


def export_torchscript(trained: Trained, inputs: tuple[torch.Tensor, ...], out: Path) -> torch.Tensor:
    """Trace the model, save it, load the file back and return its outputs on ``inputs``.

    TorchScript is deprecated in PyTorch and Lightning (in favour of ``torch.export``/ONNX); it is
    still what C++ and older serving stacks load, so its deprecation warnings are silenced here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        scripted = trained.model.to_torchscript(method="trace", example_inputs=inputs)
        torch.jit.save(scripted, str(out))
        return torch.jit.load(str(out), map_location=trained.device)(*inputs)


def export_onnx(trained: Trained, inputs: tuple[torch.Tensor, ...], out: Path) -> torch.Tensor:
    """Export with a dynamic batch axis, then run the file in onnxruntime and return its outputs."""
    try:
        import onnxruntime
    except ImportError:
        raise StagetuneError("--format onnx needs the onnx extra: pip install 'stagetune[onnx]'") from None
    names = [f"input{k}" for k in range(len(inputs))]
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        trained.model,
        inputs,
        str(out),
        input_names=names,
        output_names=["output"],
        dynamic_shapes=tuple({0: batch} for _ in inputs),
        dynamo=True,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {name: t.cpu().numpy() for name, t in zip(names, inputs)}
    return torch.from_numpy(session.run(None, feeds)[0])


def export(trained: Trained, fmt: str, out: Path, force: bool = False) -> float:
    """Write the model to ``out`` in ``fmt`` (over an existing file only with ``force``); the largest
    difference from the checkpoint's outputs."""
    if fmt not in FORMATS:
        raise StagetuneError(f"--format {fmt}: use {' or '.join(FORMATS)}")
    inputs = sample_inputs(trained)
    with torch.no_grad():
        expected = trained.model(*inputs).cpu()
    writer = export_torchscript if fmt == "torchscript" else export_onnx
    with torch.no_grad(), output_file(out, force) as tmp:
        got = writer(trained, inputs, tmp).cpu()
    return float((got - expected).abs().max())
