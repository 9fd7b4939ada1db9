"""Collaborative filtering: embedding models with biases, ratings data, interpretation."""
