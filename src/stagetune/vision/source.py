"""A source model made on the spot, so transfer learning can be shown with no downloads.

``source_weights`` trains ResNet34 from random weights on one part of the digits (by default
classes 0-4) and saves its state dict under ``cache_dir/<key>.pth``, where the key is a hash of
every setting that shapes it: change one and the source is rebuilt, keep them and later runs
reuse the file. The target run then starts from this file as ``model.weights``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.seed import isolate_rng

from stagetune.app import user_cache
from stagetune.engine.optim import Optim
from stagetune.engine.plan import Plan, Stage
from stagetune.engine.trainer import build_trainer
from stagetune.vision.data import DigitsData
from stagetune.vision.models import ResNet34Classifier

log = logging.getLogger("stagetune")

FORMAT = 1


def source_key(settings: dict) -> str:
    """A short hash of the settings (and the file format): the source's name in the cache."""
    text = json.dumps({"format": FORMAT, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_weights(
    classes: Sequence[int] = (0, 1, 2, 3, 4),
    size: int = 32,
    train_per_class: int | None = None,
    epochs: int = 3,
    lr: float = 3e-3,
    batch_size: int = 64,
    head: str = "fastai",
    seed: int = 0,
    cache_dir: str | None = None,
    progress_bar: bool = True,
) -> str:
    """The path of a ResNet34 trained on digits ``classes``: from the cache, else trained now.

    ``cache_dir`` (default: ``sources/`` in the user's cache, :func:`stagetune.app.user_cache`) and
    ``progress_bar`` do not change the model, so they are not part of its key.
    """
    settings = {
        "classes": [int(c) for c in classes],
        "size": int(size),
        "train_per_class": None if train_per_class is None else int(train_per_class),
        "epochs": int(epochs),
        "lr": float(lr),
        "batch_size": int(batch_size),
        "head": str(head),
        "seed": int(seed),
    }
    cache = Path(cache_dir).expanduser() if cache_dir else Path(user_cache()) / "sources"
    path = cache / f"{source_key(settings)}.pth"
    if path.is_file():
        log.info("source model: reusing %s", path)
        return str(path)
    log.info("source model: training ResNet34 on digits %s (saved to %s, reused by later runs)", settings["classes"], path)
    started = time.time()
    run_seed = os.environ.get("PL_GLOBAL_SEED")
    with isolate_rng():
        state, val_acc = train_source(settings, progress_bar)
    if run_seed is not None:  # the source's seed_everything must not reseed the run's data order
        os.environ["PL_GLOBAL_SEED"] = run_seed
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    record = {**settings, "val_acc": val_acc, "time_s": round(time.time() - started, 1)}
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("source model: val/acc %.4f in %.0f s", val_acc, record["time_s"])
    return str(path)


def train_source(settings: dict, progress_bar: bool = True) -> tuple[dict[str, torch.Tensor], float]:
    """Train the source model with one one-cycle stage over every layer group."""
    pl.seed_everything(settings["seed"], verbose=False)
    data = DigitsData(
        size=settings["size"],
        classes=settings["classes"],
        train_per_class=settings["train_per_class"],
        batch_size=settings["batch_size"],
        eval_batch_size=256,
        seed=settings["seed"],
    )
    model = ResNet34Classifier(weights=None, head=settings["head"], **data.model_kwargs())
    plan = Plan(stages={"source": Stage(epochs=settings["epochs"], freeze_to=0, lr=settings["lr"], wd=0.01)})
    trainer = build_trainer(plan, Optim(), {"enable_progress_bar": progress_bar, "accelerator": "auto", "devices": 1, "num_sanity_val_steps": 0})
    trainer.fit(model, datamodule=data)
    val_acc = float(trainer.callback_metrics.get("val/acc", float("nan")))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, val_acc
