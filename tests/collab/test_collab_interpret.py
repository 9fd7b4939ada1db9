"""The interpretation ranks the most-rated items by bias and along the item factors' main axes."""

import numpy as np

from stagetune.collab.interpret import as_markdown, interpret


def test_ranks_most_rated_items_by_bias_and_principal_component():
    rng = np.random.default_rng(0)
    factors = rng.normal(0, 0.01, (6, 3))
    factors[:, 0] = [-3.0, -1.0, 0.0, 1.0, 3.0, 50.0]  # the first axis dominates the spread
    bias = np.array([0.5, -0.7, 0.1, 0.9, -0.2, 9.0])
    names = ["A", "B", "C", "D", "E", "rarely rated"]
    counts = np.array([10, 9, 8, 7, 6, 1])
    result, coords, top = interpret(factors, bias, names, counts, top_items=5, n_show=2)
    assert result["items_ranked"] == 5 and top == ["A", "B", "C", "D", "E"]
    assert [n for n, _ in result["bias"]["lowest"]] == ["B", "E"]
    assert [n for n, _ in result["bias"]["highest"]] == ["D", "A"]
    first = result["components"][0]
    assert first["variance_share"] > 0.99
    ends = {first["lowest"][0][0], first["highest"][0][0]}
    assert ends == {"A", "E"} and coords.shape == (5, 3)
    assert "| B | -0.700 | D | 0.900 |" in as_markdown(result)


def test_a_model_without_biases_gets_components_only():
    factors = np.random.default_rng(1).normal(size=(20, 4))
    result, _, _ = interpret(factors, None, [f"i{k}" for k in range(20)], np.arange(20, 0, -1), n_show=3)
    assert "bias" not in result and len(result["components"]) == 3
    assert "Learned item bias" not in as_markdown(result)
