"""Run directories and what is read from them: records, HParams, sweep reports, trained models."""
