"""Image files classified by a trained run's model: read by its own transform, predicted in batches, optionally mirrored (TTA) and averaged over an ensemble."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from stagetune.errors import DataError, StagetuneError
from stagetune.runs.trained import Trained


@dataclass
class Prediction:
    path: str
    label: str
    probability: float
    top: list[tuple[str, float]]


def image_files(inputs: Sequence[str]) -> list[Path]:
    """The files given, and every image file under the folders given (sorted); none is an error."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        elif path.exists():
            files.append(path)
        else:
            raise DataError(f"{name}: no such file or folder")
    if not files:
        raise DataError(f"no image files in {', '.join(inputs) or 'the arguments'} (extensions: {', '.join(IMG_EXTENSIONS)})")
    return files


def image_transform(trained: Trained) -> Callable[[Image.Image], torch.Tensor]:
    """The run's evaluation transform; a run whose data is not images cannot predict files."""
    transform = getattr(trained.datamodule, "eval_transform", None)
    if transform is None:
        raise StagetuneError(
            f"{trained.run.path} is a {trained.cfg.get('experiment', '?')} run, not an image classifier (stagetune-recommend uses rating runs)"
        )
    return transform()


def read_image(path: Path, transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    with Image.open(path) as img:
        return transform(img)


@torch.no_grad()
def probabilities(models: Sequence[torch.nn.Module], x: torch.Tensor, tta: bool) -> torch.Tensor:
    """Softmax of each model's logits, averaged over the models; with ``tta``, also over the mirrored images."""
    views = [x, x.flip(-1)] if tta else [x]
    return torch.stack([model(view).softmax(1) for model in models for view in views]).mean(0)


def predict(
    trained: Trained,
    files: Sequence[Path],
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int = 64,
    tta: bool = False,
    top_k: int = 3,
    ensemble: Sequence[Trained] = (),
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predictions for the readable files, and ``(path, reason)`` for each file that was skipped;
    with ``ensemble``, the probabilities of ``trained`` and those runs' models averaged."""
    if batch_size < 1:
        raise StagetuneError(f"--batch-size {batch_size}: must be >= 1")
    if top_k < 1:
        raise StagetuneError(f"--top-k {top_k}: must be >= 1")
    names = trained.model.class_names
    models = [trained.model, *(member.model for member in ensemble)]
    k = min(top_k, len(names))
    predictions: list[Prediction] = []
    skipped: list[tuple[str, str]] = []
    for start in range(0, len(files), batch_size):
        batch, paths = [], []
        for path in files[start : start + batch_size]:
            try:
                batch.append(read_image(path, transform))
                paths.append(str(path))
            except Exception as err:
                skipped.append((str(path), str(err).splitlines()[0] if str(err) else type(err).__name__))
        if not batch:
            continue
        probs = probabilities(models, torch.stack(batch).to(trained.device), tta).cpu()
        values, indices = probs.topk(k, dim=1)
        for path, vals, idx in zip(paths, values.tolist(), indices.tolist()):
            top = [(names[i], v) for i, v in zip(idx, vals)]
            predictions.append(Prediction(path, top[0][0], top[0][1], top))
    return predictions, skipped
