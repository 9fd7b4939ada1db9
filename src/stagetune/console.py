"""What reaches the terminal: stagetune's own lines and warnings; the rest of a run's log goes to ``train.log``.

Lightning announces every run (the GPU/TPU lines, a tip to install its cloud logger, "Loading
train_dataloader ...", "Trainer.fit stopped ...") through its own console handler, so ``train.log``
stayed empty and the terminal filled with lines a user cannot act on. The Hydra logging config
(``conf/hydra/job_logging/stagetune.yaml``) sends Lightning's loggers through the root logger to
``train.log`` in full, and :class:`ConsoleFilter` lets only their warnings through to the terminal.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf

LIBRARIES = ("pytorch_lightning", "lightning_fabric", "lightning", "lightning_utilities")
ADVERTS = ("💡 Tip:",)
# Raised by Lightning's own pytree helper (pytorch_lightning/utilities/_pytree.py), not by code a
# stagetune user writes or can change; every run printed it twice.
# Warnings Lightning raises on every run about its own internals or about stagetune's deliberate
# set-up: the pytree deprecation, and two checkpoint callbacks (the best by the metric, then
# LatestCheckpoint's last.ckpt), where "best" means the first one, as intended.
LIBRARY_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"`\.(validate|test)\(ckpt_path=\"best\"\)` is called with Trainer configured with multiple `ModelCheckpoint`",
)


def is_library(name: str) -> bool:
    return any(name == lib or name.startswith(lib + ".") for lib in LIBRARIES)


FILE_ONLY = {"file_only": True}  # ``log.error(..., extra=FILE_ONLY)``: train.log only (a failure's traceback)


class ConsoleFilter(logging.Filter):
    """On the terminal: everything of stagetune's, only warnings and errors of Lightning's; never a
    record marked :data:`FILE_ONLY` (the terminal gets one line per failure, the log its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):
            return False
        return record.levelno >= logging.WARNING or not is_library(record.name)


class NoAdverts(logging.Filter):
    """Drops Lightning's product tips from every handler, the log file included."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTS)


def quiet_library_warnings() -> None:
    """Ignore :data:`LIBRARY_WARNINGS`: they say nothing a user can act on."""
    for message in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def print_config_tree(cfg: DictConfig, file: Any = None) -> None:
    """``print_config=true``: the composed config, one branch per top-level key (a rich tree when
    rich is installed, else indented YAML under each key's name)."""
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.syntax import Syntax
        from rich.tree import Tree
    except ImportError:
        for key, value in cfg.items():
            body = OmegaConf.to_yaml(value) if isinstance(value, DictConfig) else f"{value}\n"
            print(f"{key}:", file=file)
            print("".join(f"  {line}\n" for line in body.splitlines()), end="", file=file)
        return
    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        body = OmegaConf.to_yaml(value) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(Syntax(body, "yaml"))
    Console(file=file).print(tree)
