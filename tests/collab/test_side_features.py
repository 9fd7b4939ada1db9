"""model.side: item genres and year, user age, gender and occupation as embeddings added to the
user and item vectors (and biases); the formula, the files, layer groups, sparse gradients, staging."""

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from stagetune.app import conf_dir
from stagetune.build import build
from stagetune.collab.data import RatedItems, RatingsTensor
from stagetune.collab.models import CollabNN, DotBias, SVDpp
from stagetune.collab.movielens import MovieLens
from stagetune.collab.side import AGE_EDGES, GENRES, YEAR_EDGES, SideFeature, SideTables, bucket
from stagetune.commands import export
from stagetune.errors import ConfigError, DataError
from stagetune.runs import export as exporting
from stagetune.runs import recommend as ranking
from stagetune.runs.run import train
from stagetune.runs.trained import load_trained

ALL = ["genres", "year", "age", "gender", "occupation"]


def tiny_tables() -> SideTables:
    """2 users, 3 items. Item 1: genres {1, 2}, year 1; item 2: genre 2, year 2; item 3: genre 3, no year.
    User 1: gender 1, user 2: gender 2."""
    return SideTables(
        lambda: {
            "genres": SideFeature.of("genres", 3, [(), (1, 2), (2,), (3,)]),
            "year": SideFeature.of("year", 2, [(), (1,), (2,), ()]),
            "gender": SideFeature.of("gender", 2, [(), (1,), (2,)]),
        }
    )


def rated_of(users, items, n_users) -> RatedItems:
    return RatedItems.of(RatingsTensor(torch.tensor(users), torch.tensor(items), torch.ones(len(users))), n_users)


def test_prediction_matches_the_formula_written_out():
    model = DotBias(n_users=2, n_items=3, n_factors=2, side=["genres", "year", "gender"], side_tables=tiny_tables())
    with torch.no_grad():
        model.user_factors.weight[1:] = torch.tensor([[1.0, 0.5], [-0.5, 2.0]])
        model.item_factors.weight[1:] = torch.tensor([[0.2, -0.1], [1.0, 1.0], [0.3, 0.4]])
        model.user_bias.weight[1:, 0] = torch.tensor([0.1, -0.3])
        model.item_bias.weight[1:, 0] = torch.tensor([0.2, 0.05, -0.2])
        model.item_side.tables["genres"].weight[1:] = torch.tensor([[0.4, 0.0], [0.0, 0.8], [1.0, 1.0]])
        model.item_side.tables["year"].weight[1:] = torch.tensor([[0.1, 0.1], [-0.2, 0.3]])
        model.user_side.tables["gender"].weight[1:] = torch.tensor([[0.5, -0.5], [0.0, 1.0]])
        model.item_side_bias.tables["genres"].weight[1:, 0] = torch.tensor([0.3, -0.1, 0.6])
        model.item_side_bias.tables["year"].weight[1:, 0] = torch.tensor([0.02, 0.04])
        model.user_side_bias.tables["gender"].weight[1:, 0] = torch.tensor([0.07, -0.05])
    pred = model(torch.tensor([1, 2, 0]), torch.tensor([1, 3, 2]))
    # user 1, item 1: u = p_1 + g_1 = (1.5, 0.0); v = q_1 + (G_1 + G_2)/2 + Y_1 = (0.2+0.2+0.1, -0.1+0.4+0.1) = (0.5, 0.4)
    # score = 0.75 + b_u 0.1 + gender bias 0.07 + b_i 0.2 + (0.3 - 0.1)/2 + year bias 0.02
    s1 = 1.5 * 0.5 + 0.0 * 0.4 + 0.1 + 0.07 + 0.2 + 0.1 + 0.02
    # user 2, item 3 (no year): u = (-0.5, 3.0); v = (0.3 + 1.0, 0.4 + 1.0) = (1.3, 1.4)
    s2 = -0.5 * 1.3 + 3.0 * 1.4 - 0.3 - 0.05 - 0.2 + 0.6
    # unknown user 0 (no factors, no side features), item 2: the item's bias and side biases
    s3 = 0.05 - 0.1 + 0.04
    expected = [5.5 / (1 + math.exp(-s)) for s in (s1, s2, s3)]
    assert pred.tolist() == pytest.approx(expected, abs=1e-6)


def test_svdpp_adds_side_vectors_to_the_implicit_user_vector():
    tables = tiny_tables()
    model = SVDpp(n_users=2, n_items=3, n_factors=2, side=["gender", "genres"], side_tables=tables, rated=rated_of([1, 2], [1, 2], 2))
    plain = SVDpp(n_users=2, n_items=3, n_factors=2, rated=rated_of([1, 2], [1, 2], 2))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "side" not in k})
    users, items = torch.tensor([1, 2]), torch.tensor([1, 3])
    with torch.no_grad():
        u = plain.user_factors(users) + plain.implicit_sum(users) + model.user_side(users)
        v = plain.item_factors(items) + model.item_side(items)
        b = (plain.user_bias(users) + plain.item_bias(items) + model.user_side_bias(users) + model.item_side_bias(items)).squeeze(1)
        expected = torch.sigmoid((u * v).sum(1) + b) * 5.5
        assert torch.allclose(model(users, items), expected, atol=1e-6)


@pytest.mark.parametrize(
    "make, groups",
    [
        (lambda **kw: DotBias(n_users=2, n_items=3, n_factors=4, **kw), ["embeddings", "side", "biases"]),
        (lambda **kw: SVDpp(n_users=2, n_items=3, n_factors=4, rated=rated_of([1], [2], 2), **kw), ["embeddings", "implicit", "side", "biases"]),
        (lambda **kw: CollabNN(n_users=2, n_items=3, user_width=4, item_width=5, **kw), ["embeddings", "side", "mlp"]),
    ],
)
def test_shapes_and_layer_groups(make, groups):
    model = make(side=["genres", "year", "gender"], side_tables=tiny_tables())
    assert model(torch.tensor([1, 2, 0]), torch.tensor([1, 0, 3])).shape == (3,)
    assert [g.name for g in model.layer_groups()] == groups
    side = next(g for g in model.layer_groups() if g.name == "side")
    assert list(side.modules) == [model.user_side, model.item_side]
    item_dim = model.item_factors.embedding_dim
    assert model.item_side.tables["genres"].weight.shape == (4, item_dim)  # 3 genres and the empty code 0
    assert model.user_side.tables["gender"].weight.shape == (3, model.user_factors.embedding_dim)
    assert model.all_item_vectors().shape == (4, item_dim)
    if isinstance(model, DotBias):
        biases = next(g for g in model.layer_groups() if g.name == "biases")
        assert list(biases.modules)[2:] == [model.user_side_bias, model.item_side_bias]
    assert [g.name for g in make().layer_groups()] == [g for g in groups if g != "side"]  # model.side=[]: as before


def test_a_multi_hot_row_averages_and_the_unknown_row_is_zero():
    model = DotBias(n_users=2, n_items=3, n_factors=2, side=["genres"], side_tables=tiny_tables())
    table = model.item_side.tables["genres"].weight
    got = model.item_side(torch.tensor([0, 1, 3]))
    assert torch.equal(got[0], torch.zeros(2))
    assert torch.allclose(got[1], (table[1] + table[2]) / 2)
    assert torch.allclose(got[2], table[3])
    assert model.user_side is None  # no user feature asked for


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: DotBias(n_users=2, n_items=3, n_factors=3, **kw),
        lambda **kw: CollabNN(n_users=2, n_items=3, user_width=3, item_width=3, **kw),
    ],
)
def test_sparse_mode_gives_side_gradients_only_to_the_values_a_batch_used(make):
    torch.manual_seed(0)
    dense = make(side=["genres", "year", "gender"], side_tables=tiny_tables())
    sparse = make(side=["genres", "year", "gender"], side_tables=tiny_tables(), sparse=True)
    sparse.load_state_dict(dense.state_dict())
    users, items, ratings = torch.tensor([1, 1]), torch.tensor([2, 3]), torch.tensor([4.0, 2.0])
    for model in (dense, sparse):
        model.train()
        model.loss(users, items, ratings).backward()
    used = {"genres": {2, 3}, "year": {2}, "gender": {1}}  # items 2 and 3, user 1
    for side in ("user_side", "item_side"):
        for name, table in getattr(sparse, side).tables.items():
            grad = table.weight.grad.coalesce()
            assert grad.is_sparse
            rows = {int(r) for r, v in zip(grad.indices()[0], grad.values()) if v.abs().sum() > 0}
            assert rows == used[name]
            assert torch.allclose(grad.to_dense(), getattr(dense, side).tables[name].weight.grad, atol=1e-7)


@pytest.mark.parametrize(
    "side, message",
    [
        ("genres", "a list of distinct side features from genres, year, age, gender, occupation"),
        (["genres", "colour"], "a list of distinct side features"),
        (["age", "age"], "a list of distinct side features"),
    ],
)
def test_bad_side_lists_are_one_line_config_errors_naming_the_key(side, message):
    with pytest.raises(ConfigError, match="^model.side=.*" + message) as err:
        DotBias(n_users=2, n_items=3, side=side, side_tables=tiny_tables())
    assert "\n" not in str(err.value)


def test_data_without_side_features_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^model.side=\['age'\]: this data has no side features .* use model.side=\[\]$"):
        DotBias(n_users=2, n_items=3, side=["age"], side_tables=None)
    with pytest.raises(ConfigError, match=r"^model.side=\['genres', 'age'\]: this data lacks age; it has genres, year, gender$"):
        DotBias(n_users=2, n_items=3, side=["genres", "age"], side_tables=tiny_tables())


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_synthetic_ratings_refuse_side_features_in_one_line():
    cfg = composed("experiment=ratings_synthetic", "model.side=[genres]", "data.n_ratings=200", "data.n_users=20", "data.n_items=30")
    data = build(cfg.data)
    with pytest.raises(ConfigError, match=r"^model.side=\['genres'\]: this data has no side features"):
        build(cfg.model, **data.model_kwargs())


# A GroupLens-format ml-100k folder: 12 users, 10 items, every user rates 6 items.
OCCUPATIONS = ["artist", "doctor", "student"]


def write_grouplens(folder, users: int = 12, items: int = 10):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = [(u, i, int(rng.integers(1, 6)), 1000 * u + i) for u in range(1, users + 1) for i in rng.choice(np.arange(1, items + 1), 6, replace=False)]
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    item_lines = []
    for i in range(1, items + 1):
        flags = ["1" if g in (i % 19, (3 * i) % 19) else "0" for g in range(len(GENRES))]
        date = "" if i == items else f"01-Jan-{1930 + 7 * i}"
        item_lines.append("|".join([str(i), f"Film {i}", date, "", "http://x", *flags]))
    (folder / "u.item").write_bytes(("\n".join(item_lines) + "\n").encode("latin-1"))
    user_lines = [f"{u}|{10 + 4 * u}|{'MF'[u % 2]}|{OCCUPATIONS[u % 3]}|0000{u}" for u in range(1, users + 1)]
    (folder / "u.user").write_text("\n".join(user_lines) + "\n")
    return folder


def test_grouplens_files_become_codes_per_index(tmp_path):
    data = MovieLens(path=str(write_grouplens(tmp_path / "ml-100k")), split="random", valid_pct=0.1, test_pct=0.1)
    features = data.model_kwargs()["side_tables"].features
    assert set(features) == set(ALL)
    for index, raw in enumerate(data.item_ids, 1):
        genres = sorted({raw % 19, (3 * raw) % 19})
        row = features["genres"].codes[index]
        assert sorted(row[row > 0].tolist()) == [g + 1 for g in genres]
        assert features["genres"].weights[index].sum() == pytest.approx(1.0)
        year = features["year"].codes[index, 0].item()
        assert year == (0 if raw == 10 else bucket(1930 + 7 * raw, YEAR_EDGES))  # item 10 has no date
    for index, raw in enumerate(data.user_ids, 1):
        assert features["age"].codes[index, 0] == bucket(10 + 4 * raw, AGE_EDGES)
        assert features["gender"].codes[index, 0] == ("FM".index("MF"[raw % 2]) + 1)  # labels sorted: F, M
        assert features["occupation"].codes[index, 0] == OCCUPATIONS.index(OCCUPATIONS[raw % 3]) + 1
    for feature in features.values():  # the unknown index has no side features
        assert feature.codes[0].abs().sum() == 0 and feature.weights[0].abs().sum() == 0


def test_a_side_file_that_does_not_parse_stops_at_file_and_line_only_when_asked_for(tmp_path):
    folder = write_grouplens(tmp_path / "ml-100k")
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|x|F|other|94043\n")
    data = MovieLens(path=str(folder), split="random")
    kwargs = data.model_kwargs()  # reading the ratings never opens the side files
    DotBias(**kwargs, side=[])
    with pytest.raises(DataError, match=r"u.user: user 2 has age 'x'; expected a whole number$"):
        DotBias(**kwargs, side=["age"])


@pytest.fixture
def side_run(tmp_path_factory, one_thread):
    """A dot_bias run with every side feature where only the biases group trains (freeze_to=-1)."""
    folder = write_grouplens(tmp_path_factory.mktemp("grouplens") / "ml-100k")
    out = tmp_path_factory.mktemp("side_run")
    overrides = [
        "experiment=movielens",
        f"data.path={folder}",
        "data.split=random",
        "data.batch_size=16",
        "model.n_factors=4",
        f"model.side=[{','.join(ALL)}]",
        "plan.stages.all.epochs=2",
        "plan.stages.all.freeze_to=-1",
        "trainer.enable_progress_bar=false",
        "logger=none",
    ]
    cfg = composed(*overrides)
    train(cfg, out)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the start train() builds, in the same order
    data = build(cfg.data)
    return out, build(cfg.model, **data.model_kwargs()), data


def test_frozen_side_factors_stay_unchanged_to_the_bit_and_the_run_recommends_and_exports(side_run, tmp_path, capsys):
    run, start, data = side_run
    trained = load_trained(run, "last")
    after = trained.model
    frozen = {
        **{f"{n}.weight": getattr(start, n).weight for n in ("user_factors", "item_factors")},
        **{f"user_side.{k}": v for k, v in start.user_side.state_dict().items()},
        **{f"item_side.{k}": v for k, v in start.item_side.state_dict().items()},
    }
    state = after.state_dict()
    for name, value in frozen.items():  # embeddings and side: frozen groups
        assert torch.equal(state[name], value), name
    for name in ("user_bias", "item_bias"):
        assert not torch.equal(getattr(after, name).weight, getattr(start, name).weight)
    assert not torch.equal(after.item_side_bias.tables["genres"].weight, start.item_side_bias.tables["genres"].weight)
    user = int(data.user_ids[int(data.train_set.users[0]) - 1])
    top = ranking.recommend(trained, user, 3)
    assert len(top) == 3 and all(a.score >= b.score for a, b in zip(top, top[1:]))
    assert len(ranking.similar(trained, int(data.item_ids[0]), 2)) == 2
    assert "Learned item bias" in (run / "interpretation" / "interpretation.md").read_text()
    out = tmp_path / "model.onnx"
    with pytest.raises(SystemExit) as exit_:
        export.main([str(run), "--format", "onnx", "--out", str(out)])
    assert exit_.value.code == 0
    import onnxruntime

    best = load_trained(run)  # what export reads
    inputs = tuple(t[:3] for t in exporting.sample_inputs(best))
    with torch.no_grad():
        expected = best.model(*inputs)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {f"input{k}": t.numpy() for k, t in enumerate(inputs)})[0])
    assert (got - expected).abs().max() <= 1e-5


def test_a_sparse_svdpp_run_with_side_features_stages_them(tmp_path, one_thread):
    folder = write_grouplens(tmp_path / "ml-100k")
    cfg = composed(
        "experiment=movielens_svdpp",
        f"data.path={folder}",
        "data.split=random",
        "data.batch_size=16",
        "model.n_factors=4",
        "model.sparse=true",
        "model.side=[genres,age]",
        "plan=biases_first",
        "plan.stages.biases.epochs=1",
        "plan.stages.all.epochs=1",
        "+plan.stages.all.wd.side=0.5",
        "trainer.enable_progress_bar=false",
        "logger=none",
    )
    train(cfg, tmp_path / "run")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build(cfg.data)
    start = build(cfg.model, **data.model_kwargs())
    after = load_trained(tmp_path / "run", "last").model
    genres = after.item_side.tables["genres"].weight
    assert not torch.equal(genres, start.item_side.tables["genres"].weight)  # trained in stage `all`
    assert torch.equal(genres[0], torch.zeros(4))  # the empty code stays zero
