"""stagetune: staged fine-tuning experiments."""
