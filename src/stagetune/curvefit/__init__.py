"""Curve fitting on 1-D points: small pictures of what the optimizer and a ReLU network do."""
