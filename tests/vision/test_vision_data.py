"""Image data: the digits split, ImageFolder trees with bad files, a tiny Oxford-IIIT Pet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stagetune.errors import ConfigError, DataError
from stagetune.vision.data import DigitsData, ImageFolderData, PetsData, stratified_split
from tests.helpers.images import image_tree, pets_tree


def labels_of(ds) -> np.ndarray:
    return np.array([int(ds[i][1]) for i in range(len(ds))])


def test_digits_target_task_has_few_labelled_images_and_a_stratified_split():
    data = DigitsData(size=16, classes=[5, 6, 7, 8, 9], train_per_class=10, seed=3)
    assert data.model_kwargs() == {"n_classes": 5, "class_names": ["5", "6", "7", "8", "9"]}
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert np.bincount(labels_of(train)).tolist() == [10] * 5
    assert train[0][0].shape == (3, 16, 16) and train[0][0].dtype == torch.float32
    for split in (val, test):
        counts = np.bincount(labels_of(split))
        assert counts.min() >= 34 and counts.max() <= 38, "about 20% of each class (~180 images)"
    assert data.summary() == {"train_images": 50, "val_images": len(val), "test_images": len(test), "classes": 5}
    again = DigitsData(size=16, classes=[5, 6, 7, 8, 9], train_per_class=10, seed=3)
    again.setup()
    assert torch.equal(again.splits["test"].images, test.images), "the split is seeded"


def test_stratified_split_puts_every_index_in_exactly_one_split():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    test, val, train = stratified_split(labels, [0.2, 0.1], np.random.default_rng(0))
    assert sorted(np.concatenate([test, val, train]).tolist()) == list(range(100))
    assert np.bincount(labels[test]).tolist() == [10, 6, 4]
    assert np.bincount(labels[val]).tolist() == [5, 3, 2]


def test_digits_splits_cover_the_chosen_classes():
    data = DigitsData(size=8, classes=[0, 3])
    data.setup()
    sizes = [len(data.splits[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 178 + 183, "every image of digits 0 and 3 in exactly one split"
    assert sizes[1] == sizes[2] == round(0.2 * 178) + round(0.2 * 183)


def test_digits_augmentation_changes_training_images_only():
    data = DigitsData(size=16, classes=[1, 2], augment=True, seed=0)
    data.setup()
    torch.manual_seed(0)
    train = data.splits["train"]
    assert not torch.equal(train[0][0], train.images[0])
    assert torch.equal(data.splits["val"][0][0], data.splits["val"].images[0])


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"classes": [3]}, "data.classes"),
        ({"classes": [1, 12]}, "data.classes"),
        ({"size": 4}, "data.size"),
        ({"train_per_class": 0}, "data.train_per_class"),
        ({"num_workers": -1}, "data.num_workers"),
    ],
)
def test_bad_digits_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        DigitsData(**kwargs)


def test_image_folder_reads_every_split(tmp_path):
    root = image_tree(tmp_path, {"train": {"cat": 3, "dog": 2}, "valid": {"cat": 1, "dog": 1}, "test": {"cat": 1, "dog": 2}})
    data = ImageFolderData(str(root), size=32, batch_size=2)
    assert data.model_kwargs() == {"n_classes": 2, "class_names": ["cat", "dog"]}
    assert data.summary() == {"train_images": 5, "val_images": 2, "test_images": 3, "classes": 2}
    x, y = next(iter(data.val_dataloader()))
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 1]
    assert data.has_test


def test_an_image_folder_without_test_sets_a_seeded_share_of_train_aside(tmp_path):
    root = image_tree(tmp_path, {"train": {"cat": 10, "dog": 10}, "valid": {"cat": 1, "dog": 1}})
    data = ImageFolderData(str(root), size=32, test_pct=0.25, seed=3)
    assert data.has_test
    assert data.summary() == {"train_images": 15, "val_images": 2, "test_images": 5, "classes": 2}
    train, test = (set(data.splits[s].indices) for s in ("train", "test"))
    assert not train & test and len(train | test) == 20, "every train/ image in exactly one part"
    again = ImageFolderData(str(root), size=32, test_pct=0.25, seed=3)
    again.setup()
    assert again.splits["test"].indices == sorted(test)
    x, _ = data.splits["test"][0]
    assert x.shape == (3, 32, 32)
    with pytest.raises(DataError, match=r"has 1 image\(s\): too few to set data.test_pct=0.1 .* test/ folder"):
        ImageFolderData(str(image_tree(tmp_path / "few", {"train": {"cat": 1}, "valid": {"cat": 1}})), size=32).setup()


def test_corrupt_images_are_listed_in_one_error_or_skipped(tmp_path, caplog):
    root = image_tree(tmp_path, {"train": {"cat": 3, "dog": 3}, "valid": {"cat": 1, "dog": 1}})
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not an image at all")
    (root / "train" / "dog" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError) as err:
        ImageFolderData(str(root), size=32).setup()
    message = str(err.value)
    assert message.startswith("2 unreadable image file(s)")
    assert "broken.jpg" in message and "truncated.png" in message and "data.skip_bad_files=true" in message

    data = ImageFolderData(str(root), size=32, skip_bad_files=True)
    with caplog.at_level("WARNING", logger="stagetune"):
        data.setup()
    assert len(data.splits["train"]) + len(data.splits["test"]) == 6
    assert "skipped 2 unreadable image file(s)" in caplog.text


def test_an_empty_class_folder_or_split_is_named(tmp_path):
    root = image_tree(tmp_path / "a", {"train": {"cat": 2, "dog": 2}, "valid": {"cat": 1, "dog": 1}})
    (root / "train" / "fox").mkdir()
    with pytest.raises(DataError, match=r"empty class folder\(s\) in .*train: fox"):
        ImageFolderData(str(root), size=32).setup()

    root = image_tree(tmp_path / "b", {"train": {"cat": 2, "dog": 2}})
    (root / "valid").mkdir()
    with pytest.raises(DataError, match=r"split .*valid has no images"):
        ImageFolderData(str(root), size=32).setup()

    with pytest.raises(DataError, match="no valid/ folder"):
        ImageFolderData(str(image_tree(tmp_path / "c", {"train": {"cat": 1, "dog": 1}})), size=32).setup()


def test_pets_layout_gives_37_style_breeds_a_seeded_valid_split_and_the_test_split(tmp_path):
    data = PetsData(root=str(pets_tree(tmp_path)), size=32, valid_pct=0.25, batch_size=4, seed=1)
    assert data.model_kwargs() == {"n_classes": 3, "class_names": ["Abyssinian", "Great Pyrenees", "Pug"]}
    assert data.summary() == {"train_images": 9, "val_images": 3, "test_images": 6, "classes": 3}
    x, y = data.splits["test"][5]
    assert x.shape == (3, 32, 32) and y == 2


def test_missing_pets_says_where_and_how_to_download(tmp_path):
    with pytest.raises(DataError, match=r"not found under .*oxford-iiit-pet.*data.download=true"):
        PetsData(root=str(tmp_path)).setup()


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (4, 3), (16, 8), (64, 8)])
def test_file_data_gets_a_worker_per_spare_core(monkeypatch, tmp_path, cores, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    image_tree(tmp_path, {"train": {"a": 2, "b": 2}, "valid": {"a": 1, "b": 1}})
    data = ImageFolderData(root=str(tmp_path), size=16, batch_size=2)
    data.setup()
    loader = data.train_dataloader()
    assert loader.num_workers == expected and loader.persistent_workers
    assert loader.pin_memory == torch.cuda.is_available()


def test_in_memory_digits_get_no_workers_unless_augmented(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)))
    for kwargs, workers in (({}, 0), ({"augment": True}, 3), ({"num_workers": 2}, 2)):
        data = DigitsData(size=8, **kwargs)
        data.setup()
        assert data.train_dataloader().num_workers == workers, kwargs
