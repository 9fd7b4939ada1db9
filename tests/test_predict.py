"""Using trained runs: predict images, recommend items, export models; and the one-line errors.

Two tiny runs are made once for the whole file, from the real experiment configs (digits_scratch
at 16 px, ratings_synthetic on 1,000 ratings), and every command is run on them as ``main(argv)``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from sklearn.datasets import load_digits

from stagetune.commands import export, predict, recommend
from stagetune.runs import export as exporting
from stagetune.runs import recommend as ranking
from stagetune.runs.trained import load_trained
from stagetune.vision.data import DigitsData, DigitsFile
from stagetune.vision.models import ResNet34Classifier
from tests.helpers.runs import make_run, read_csv, run_main

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, one_thread) -> Path:
    return make_run(
        tmp_path_factory.mktemp("digits"),
        "experiment=digits_scratch",
        "data.train_per_class=2",
        "plan.stages.frozen.epochs=1",
        "plan.stages.unfrozen.epochs=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    )


@pytest.fixture(scope="module")
def ratings_run(tmp_path_factory, one_thread) -> Path:
    return make_run(
        tmp_path_factory.mktemp("ratings"),
        "experiment=ratings_synthetic",
        "data.n_users=50",
        "data.n_items=40",
        "data.n_ratings=1000",
        "data.batch_size=64",
        "plan.stages.all.epochs=2",
    )


def checkpoint_model(run: Path, name: str = "best-*.ckpt") -> ResNet34Classifier:
    """The digits classifier rebuilt by hand from a checkpoint, independently of the commands."""
    ckpt = next((run / "checkpoints").glob(name))
    model = ResNet34Classifier(n_classes=5, head="fastai", weights=None, class_names=["5", "6", "7", "8", "9"])
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    return model.eval()


def test_image_files_become_the_same_inputs_as_the_digits_data():
    digits = load_digits()
    data = DigitsData(size=16)
    data.setup()
    tensors = torch.cat([data.splits[s].images for s in ("train", "val", "test")])
    png = np.round(digits.images[0] * 255 / 16).astype(np.uint8)
    from_file = DigitsFile(16)(Image.fromarray(png))
    assert from_file.shape == (3, 16, 16)
    nearest = (tensors - from_file).abs().flatten(1).max(1).values.min()
    assert nearest < 0.5 / 255 / 0.225 + 1e-6  # within half a grey level (over ImageNet's smallest std)


def test_predictions_equal_the_models_forward_and_unreadable_files_are_skipped(digits_run, digit_files, tmp_path, capsys):
    folder, _ = digit_files
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    out = tmp_path / "pred.csv"
    code = run_main(predict, digits_run, folder, broken, "--top-k", 2, "--batch-size", 4, "--out", out)
    captured = capsys.readouterr()
    assert code == 0
    assert f"skipped unreadable image {broken}" in captured.err
    rows = read_csv(out)
    assert [Path(r["path"]).name for r in rows] == [f"{n}.png" for n in range(6)]

    model = checkpoint_model(digits_run)
    x = torch.stack([DigitsFile(16)(Image.open(folder / f"{n}.png")) for n in range(6)])
    with torch.no_grad():
        probs = model(x).softmax(1)
    best, index = probs.max(1)
    assert [r["prediction"] for r in rows] == [model.class_names[i] for i in index]
    assert [float(r["probability"]) for r in rows] == pytest.approx(best.tolist(), abs=1e-6)
    second = probs.topk(2).indices[:, 1]
    assert [r["top_k"].split()[1].split(":")[0] for r in rows] == [model.class_names[i] for i in second]
    assert rows[0]["path"] in captured.out  # the printed table


def test_tta_averages_each_image_with_its_mirror(digits_run, digit_files, tmp_path):
    folder, _ = digit_files
    out = tmp_path / "tta.csv"
    assert run_main(predict, digits_run, folder, "--tta", "--out", out) == 0
    model = checkpoint_model(digits_run)
    x = torch.stack([DigitsFile(16)(Image.open(folder / f"{n}.png")) for n in range(6)])
    with torch.no_grad():
        probs = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert [float(r["probability"]) for r in read_csv(out)] == pytest.approx(probs.max(1).values.tolist(), abs=1e-6)


def test_recommendations_are_unrated_items_by_predicted_rating(ratings_run, capsys):
    trained = load_trained(ratings_run)
    data = trained.datamodule
    user = int(data.user_ids[int(data.train_set.users[0]) - 1])
    u = data.index_of("user", user)
    rated = {int(data.item_ids[i - 1]) for s in data.parts() for i in s.items[s.users == u].tolist()}
    assert rated
    rows = ranking.recommend(trained, user, k=5)
    assert len(rows) == 5 and not {r.item for r in rows} & rated
    scores = [r.score for r in rows]
    assert scores == sorted(scores, reverse=True)
    items = torch.tensor([data.index_of("item", r.item) for r in rows])
    with torch.no_grad():
        expected = trained.model(torch.full_like(items, u), items)
    assert scores == pytest.approx(expected.tolist(), abs=1e-6)
    everything = ranking.recommend(trained, user, k=data.n_items)
    seen = {int(i) for i in data.item_ids[np.flatnonzero(data.item_counts()[1:] > 0)]}
    assert {r.item for r in everything} == seen - rated

    assert run_main(recommend, ratings_run, "--user", user, "-k", 3) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"top 3 for user {user}" and len(lines) == 5
    assert lines[2].split() == [str(rows[0].item), f"{rows[0].score:.3f}"]


def test_similar_items_rank_by_cosine_of_item_factors(ratings_run):
    trained = load_trained(ratings_run)
    data = trained.datamodule
    item = int(data.item_ids[int(data.train_set.items[0]) - 1])
    rows = ranking.similar(trained, item, k=4)
    factors = trained.model.item_factors.weight.detach()
    i = data.index_of("item", item)
    assert item not in {r.item for r in rows}
    for r in rows:
        j = data.index_of("item", r.item)
        assert r.score == pytest.approx(float(torch.cosine_similarity(factors[i], factors[j], dim=0)), abs=1e-6)
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)


@pytest.mark.parametrize(
    "run, fmt",
    [
        ("digits_run", "torchscript"),
        pytest.param("digits_run", "onnx", marks=pytest.mark.slow),  # ResNet34 through torch.export: about 15 s
        ("ratings_run", "torchscript"),
        ("ratings_run", "onnx"),
    ],
)
def test_exported_models_reproduce_the_checkpoints_outputs(run, fmt, request, tmp_path, capsys):
    run_dir = request.getfixturevalue(run)
    out = tmp_path / f"model.{fmt}"
    assert run_main(export, run_dir, "--format", fmt, "--out", out) == 0
    assert "max difference from the checkpoint's outputs" in capsys.readouterr().out
    trained = load_trained(run_dir)
    inputs = tuple(t[:3] for t in exporting.sample_inputs(trained))  # another batch size than the export's
    with torch.no_grad():
        expected = trained.model(*inputs)
    if fmt == "torchscript":
        with pytest.warns(FutureWarning):
            got = torch.jit.load(str(out))(*inputs)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {f"input{k}": t.numpy() for k, t in enumerate(inputs)})[0])
    assert (got - expected).abs().max() <= 1e-5


def one_error_line(module, capsys, *argv) -> tuple[int, str]:
    code = run_main(module, *argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return code, err.strip()


def test_bad_inputs_are_one_line_errors(digits_run, ratings_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert one_error_line(predict, capsys, tmp_path / "nope", empty) == (1, f"stagetune-predict: error: {tmp_path / 'nope'}: no such run directory")
    code, err = one_error_line(predict, capsys, empty, empty)
    assert code == 1 and err.endswith(f"{empty} is not a stagetune run directory (no config.yaml)")
    code, err = one_error_line(predict, capsys, digits_run, empty)
    assert code == 1 and err.startswith(f"stagetune-predict: error: no image files in {empty}")
    code, err = one_error_line(predict, capsys, ratings_run, empty)
    assert code == 1 and "not an image classifier" in err
    assert one_error_line(recommend, capsys, ratings_run, "--user", 999) == (
        1,
        "stagetune-recommend: error: unknown user 999: it has no ratings in the run's training data",
    )
    assert one_error_line(recommend, capsys, ratings_run, "--similar", -3) == (
        1,
        "stagetune-recommend: error: unknown item -3: it has no ratings in the run's training data",
    )
    code, err = one_error_line(recommend, capsys, digits_run, "--user", 1)
    assert code == 1 and "not a rating model" in err
    code, err = one_error_line(export, capsys, empty, "--format", "onnx")
    assert code == 1 and "not a stagetune run directory" in err


@pytest.mark.slow  # a fresh interpreter importing torch and Lightning: about 15 s on shared cores
def test_the_module_entry_point_reports_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "stagetune.commands.recommend", str(tmp_path / "missing"), "--user", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr == f"stagetune-recommend: error: {tmp_path / 'missing'}: no such run directory\n"


def test_the_runs_starting_weights_are_not_needed_to_load_it(digits_run, tmp_path):
    """A transfer run's source file (model.weights) may be gone: the checkpoint holds every tensor."""
    moved = tmp_path / "run"
    shutil.copytree(digits_run, moved)
    cfg = OmegaConf.load(moved / "config.yaml")
    cfg.model.weights = str(tmp_path / "deleted-source.pth")
    (moved / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (moved / "metrics.json").unlink()  # its best checkpoint path points into the original run
    trained = load_trained(moved)
    assert trained.checkpoint == moved / "checkpoints" / "last.ckpt"
    x = exporting.sample_inputs(trained)[0]
    with torch.no_grad():
        assert torch.equal(trained.model(x), checkpoint_model(digits_run, "last.ckpt")(x))


def test_predict_never_replaces_a_file_or_a_run_record_unless_forced(digits_run, digit_files, tmp_path, capsys):
    folder, _ = digit_files
    out = tmp_path / "pred.csv"
    out.write_text("mine\n")
    code, err = one_error_line(predict, capsys, digits_run, folder, "--out", out)
    assert (code, err) == (2, f"stagetune-predict: config error: --out='{out}': exists; choose another file, or add --force to replace it")
    assert out.read_text() == "mine\n"
    assert run_main(predict, digits_run, folder, "--out", out, "--force") == 0
    assert len(read_csv(out)) == 6
    capsys.readouterr()
    for record in ("config.yaml", "metrics.json", "checkpoints/last.ckpt", "checkpoints/new.csv", "history.csv", "eval-test.csv", "stage-all-confusion.png"):
        path = digits_run / record
        before = path.read_bytes() if path.exists() else None
        code, err = one_error_line(predict, capsys, digits_run, folder, "--out", path)
        assert code == 2 and err.endswith(f"is in the records of the run {digits_run} ({record.split('/')[0]}); write elsewhere, or add --force")
        assert (path.read_bytes() if path.exists() else None) == before
    code, err = one_error_line(predict, capsys, digits_run, folder, "--out", tmp_path)
    assert code == 2 and err.endswith(f"is a directory; give a file name, e.g. --out {tmp_path / 'predictions.csv'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.csv"], "no temporary file left behind"


def test_export_never_replaces_a_file_or_a_run_record_unless_forced(ratings_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ratings_run, run)
    exported = run / "export" / "model.pt"
    assert run_main(export, run, "--format", "torchscript") == 0
    first = exported.read_bytes()
    capsys.readouterr()
    code, err = one_error_line(export, capsys, run, "--format", "torchscript")
    assert code == 2 and err.endswith("exists; choose another file, or add --force to replace it")
    assert exported.read_bytes() == first
    assert run_main(export, run, "--format", "torchscript", "--force") == 0
    capsys.readouterr()
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    code, err = one_error_line(export, capsys, run, "--format", "torchscript", "--out", last)
    assert code == 2 and f"is in the records of the run {run} (checkpoints)" in err
    assert last.read_bytes() == before
    assert run_main(export, run, "--format", "torchscript", "--out", run / "checkpoints" / "model.pt", "--force") == 0
    assert torch.jit.load(str(run / "checkpoints" / "model.pt")) is not None
    assert sorted(p.name for p in (run / "export").iterdir()) == ["model.pt"], "no temporary file left behind"
