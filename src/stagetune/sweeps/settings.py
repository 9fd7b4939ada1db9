"""A study worker's settings (``hydra.sweeper.*`` of ``hydra/sweeper=optuna``): declared once, here.

The Hydra plugin's config schema extends this dataclass, so its defaults are the ones composed;
the worker reads the same type, checked. Importing it imports neither Optuna nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from stagetune.errors import ConfigError

DIRECTIONS = ("minimize", "maximize")


@dataclass
class SweeperSettings:
    """How one worker takes part in a study."""

    direction: str = "minimize"
    # None: in this process's memory (one worker). A file path: a journal file every worker on a
    # shared filesystem appends to. A URL (sqlite:///study.db, postgresql://...): a database.
    storage: Optional[str] = None
    study_name: Optional[str] = None  # None: the experiment's name
    # Trials of the whole study, across all its workers, in any state but failed.
    n_trials: int = 20
    # Trials this worker keeps in flight: 1 with the basic launcher (start more workers instead),
    # more with a launcher that runs jobs elsewhere (submitit).
    n_jobs: int = 1
    # Stop asking once the study has this many failed trials (0: never stop for failures).
    max_failures: int = 10
    # Seconds between the heartbeats written into a running trial, and of silence after which a
    # trial counts as abandoned by a dead worker: it is marked failed and its parameters queued again.
    heartbeat_interval: float = 30.0
    grace_period: float = 120.0
    # Points to try first, once per study: a list of {key: value} mappings.
    enqueue: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, node: Any, experiment: str | None) -> "SweeperSettings":
        """The settings a sweeper was given (Hydra typed them by the schema); an unnamed study takes the experiment's name."""
        given = {f.name: node[f.name] for f in fields(cls) if f.name in node}
        settings = cls(**given)
        settings.study_name = str(settings.study_name or experiment or "stagetune")
        settings.enqueue = [dict(point) for point in settings.enqueue or []]
        return settings

    def check(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError("hydra.sweeper.direction", self.direction, "allowed: " + ", ".join(DIRECTIONS))
        for key in ("n_trials", "n_jobs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"hydra.sweeper.{key}", getattr(self, key), "must be >= 1")
        if self.max_failures < 0:
            raise ConfigError("hydra.sweeper.max_failures", self.max_failures, "must be >= 0")
        if not 0 < self.heartbeat_interval < self.grace_period:
            raise ConfigError("hydra.sweeper.grace_period", self.grace_period, f"must exceed heartbeat_interval ({self.heartbeat_interval}) > 0")
