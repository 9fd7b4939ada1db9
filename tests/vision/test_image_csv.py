"""Images listed in a CSV (fastai's from_csv): parts by a column or seeded, and a whole run from the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from stagetune.app import conf_dir
from stagetune.errors import DataError
from stagetune.runs.run import train
from stagetune.vision.data import ImageCSVData
from tests.helpers.images import write_image

CLASSES = ("cat", "dog", "owl")


def listed(root: Path, per_class: int = 10, split: str | None = None, header: str = "path,label") -> Path:
    """``root/labels.csv`` listing ``img/<class>_<k>.png`` tiny random images; ``split(k)`` adds a third column."""
    lines = [header]
    for c, name in enumerate(CLASSES):
        for k in range(per_class):
            write_image(root / "img" / f"{name}_{k}.png", seed=c * 100 + k, size=12)
            lines.append(f"img/{name}_{k}.png,{name}" + (f",{eval(split)}" if split else ""))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def data_of(path: Path, **kwargs) -> ImageCSVData:
    data = ImageCSVData(str(path), size=16, batch_size=4, augment=False, **kwargs)
    data.setup()
    return data


def test_a_seeded_split_takes_each_classs_share_and_the_same_seed_the_same_images(tmp_path):
    data = data_of(listed(tmp_path), valid_pct=0.2, test_pct=0.1)
    assert data.classes == list(CLASSES) and data.model_kwargs() == {"n_classes": 3, "class_names": list(CLASSES)}
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 21, "val": 6, "test": 3}
    assert sorted(data.splits["val"].labels) == [0, 0, 1, 1, 2, 2]
    again = data_of(tmp_path / "labels.csv", valid_pct=0.2, test_pct=0.1)
    assert again.splits["test"].files == data.splits["test"].files
    x, y = data.splits["train"][0]
    assert tuple(x.shape) == (3, 16, 16) and y in (0, 1, 2)


def test_a_split_column_says_each_images_part(tmp_path):
    parts = "['train', 'train', 'valid', 'test'][k % 4]"
    data = data_of(listed(tmp_path, per_class=8, split=parts, header="path,label,part"), split_col="part")
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 12, "val": 6, "test": 6}
    assert all(f.endswith(("_2.png", "_6.png")) for f in data.splits["val"].files)


def test_fastais_is_valid_column_and_a_test_part_carved_from_train(tmp_path):
    data = data_of(listed(tmp_path, per_class=10, split="'True' if k < 3 else 'False'", header="path,label,is_valid"), split_col="is_valid", test_pct=0.1)
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 19, "val": 9, "test": 2}
    assert not set(data.splits["test"].files) & set(data.splits["train"].files)


def test_files_live_under_root_when_given(tmp_path):
    listed(tmp_path / "images")
    table = tmp_path / "labels.csv"
    table.write_text((tmp_path / "images" / "labels.csv").read_text())
    assert len(data_of(table, root=str(tmp_path / "images")).splits["train"]) == 21


@pytest.mark.parametrize(
    "edit,settings,fragment",
    [
        (lambda t: t.replace("path,label", "file,label"), {}, "no column 'path' (data.path_col); its header has: file, label"),
        (lambda t: t.replace("img/dog_3.png", "img/gone.png"), {}, "1 image file(s) listed in {f} are missing (data.root={r}): {r}/img/gone.png"),
        (lambda t: t.replace(",owl", ",cat").replace(",dog", ",cat"), {}, "one class only ('cat'); a classifier needs two or more"),
        (lambda t: t.replace("img/cat_0.png,cat", "img/cat_0.png,"), {}, "{f}:2: empty label"),
        (lambda t: "path,label\n", {}, "no images listed"),
        (
            lambda t: (
                t.replace("path,label", "path,label,part").replace(",cat\n", ",cat,train\n").replace(",dog\n", ",dog,valid\n").replace(",owl\n", ",owl,train\n")
            ),
            {"split_col": "part"},
            "class(es) dog have no training image",
        ),
        (
            lambda t: t.replace("path,label", "path,label,part").replace("\n", ",holdout\n").replace("path,label,part,holdout", "path,label,part"),
            {"split_col": "part"},
            "{f}:2: split 'holdout' is not train, valid or test",
        ),
    ],
)
def test_a_bad_table_is_one_line(tmp_path, edit, settings, fragment):
    path = listed(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataError) as err:
        data_of(path, **settings)
    assert fragment.format(f=path, r=tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_a_whole_run_from_an_image_table(tmp_path):
    table = listed(tmp_path / "images", per_class=6)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "experiment=pets",
                "data=image_csv",
                f"data.path={table}",
                "data.size=32",
                "data.batch_size=4",
                "data.num_workers=0",
                "model=torchvision",
                "model.arch=resnet18",
                "model.weights=null",
                "model.head=linear",
                "plan.stages.frozen.epochs=1",
                "plan.stages.unfrozen.epochs=1",
                "trainer.enable_progress_bar=false",
            ],
        )
    train(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["data"] == {"train_images": 12, "val_images": 3, "test_images": 3, "classes": 3}
    assert [s["stage"] for s in metrics["stages"]] == ["frozen", "unfrozen"]
