"""A sampler seeded by (study seed, trial number), so that workers never draw the same point.

Every worker builds its sampler from the same config. Seeded once per worker, two workers started
together would draw the same random start-up points, and a restarted worker would repeat the first
run's. :class:`TrialSeeded` builds the configured sampler afresh for each trial with a seed derived
from the configured one and the trial's number: which worker runs a trial no longer matters, and a
one-worker study with a seed is repeatable. Samplers keep their knowledge in the storage (TPE reads
every finished and running trial there), so nothing is lost by building one per trial.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GridSampler
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int | None, number: int) -> int | None:
    """An independent seed for trial ``number`` of a study seeded with ``seed`` (None: unseeded)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


class TrialSeeded(BaseSampler):
    """Delegates to ``make(seed)``, built again before each trial with :func:`trial_seed`."""

    def __init__(self, make: Callable[[int | None], BaseSampler], seed: int | None) -> None:
        self.make, self.seed = make, seed
        self.inner: BaseSampler = make(seed)
        self.number: int | None = None

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner, self.number = self.make(trial_seed(self.seed, trial.number)), trial.number
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        # Only the trial this sampler drew (a worker also tells other workers' silent trials), and not
        # the grid sampler's: its after_trial only calls Study.stop, which exists for Study.optimize;
        # workers stop by counting trials.
        if trial.number == self.number and not isinstance(self.inner, GridSampler):
            self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
