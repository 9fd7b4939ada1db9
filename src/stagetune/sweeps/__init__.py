"""Optuna studies shared by many workers: storage, search space, sampling, pruning, the worker loop.

The Hydra sweeper (``hydra_plugins.stagetune_optuna``) is a thin shell over :mod:`.worker`; the
Lightning callback that reports each validation to the trial is :mod:`.pruning`.
"""
