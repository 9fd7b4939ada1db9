"""Image data for the classifiers: scikit-learn's digits, any ImageFolder tree, images listed in a CSV, Oxford Pets.

Every datamodule gives ``model_kwargs()`` (class count and names), a test split, the
normalisation it applied (``mean``/``std``, so pictures can be shown as they were) and a
``summary()`` of its sizes for ``metrics.json``.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder, OxfordIIITPet
from torchvision.datasets.folder import IMG_EXTENSIONS

from stagetune.engine.loaders import default_workers, epoch_loader, eval_loader
from stagetune.errors import ConfigError, DataError
from stagetune.vision.weights import IMAGENET

log = logging.getLogger("stagetune")

MEAN: tuple[float, float, float] = tuple(IMAGENET.transforms().mean)
STD: tuple[float, float, float] = tuple(IMAGENET.transforms().std)


class ImageDataModule(pl.LightningDataModule):
    """What the image datamodules share: loaders, class names, the normalisation they used."""

    has_test = True
    mean, std = MEAN, STD

    decodes_files = True  # examples are read and decoded per item, so loader workers pay off

    def __init__(self, batch_size: int, num_workers: int | None, eval_batch_size: int | None = None) -> None:
        super().__init__()
        for key, value in (("data.batch_size", batch_size), ("data.eval_batch_size", eval_batch_size)):
            if value is not None and value < 1:
                raise ConfigError(key, value, "must be >= 1")
        if num_workers is not None and num_workers < 0:
            raise ConfigError("data.num_workers", num_workers, "must be >= 0, or null to choose from the machine")
        self.batch_size, self.requested_workers = batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.classes: list[str] = []
        self.splits: dict[str, Dataset] = {}

    def model_kwargs(self) -> dict:
        self.setup()
        return {"n_classes": len(self.classes), "class_names": list(self.classes)}

    def eval_transform(self):
        """PIL image -> model input, exactly as validation images are prepared (for new files)."""
        return image_transforms(self.size, augment=False)[1]

    def summary(self) -> dict:
        self.setup()
        return {f"{split}_images": len(ds) for split, ds in self.splits.items()} | {"classes": len(self.classes)}

    @property
    def num_workers(self) -> int:
        """``data.num_workers``, or when null one chosen from the machine (:func:`default_workers`)."""
        if self.requested_workers is not None:
            return self.requested_workers
        return default_workers(self.decodes_files or bool(getattr(self, "augment", False)))

    def _loader_kwargs(self) -> dict:
        workers = self.num_workers
        return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": torch.cuda.is_available()}

    def train_dataloader(self) -> DataLoader:
        train = self.splits["train"]
        return epoch_loader(train, self.batch_size, shuffle=True, drop_last=len(train) > self.batch_size, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.splits["val"], self.eval_batch_size, **self._loader_kwargs())

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self.splits["test"], self.eval_batch_size, **self._loader_kwargs())


def check_size(size: int) -> None:
    """``data.size``: the side of the square the model sees; ResNet34 needs 8 px or more (five halvings)."""
    if size < 8:
        raise ConfigError("data.size", size, "must be >= 8 (pixels on a side; ImageNet weights expect 224)")


class TensorImages(Dataset):
    """Images held in memory as one tensor, with an optional per-image augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment=None) -> None:
        self.images, self.labels, self.augment = images, labels, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        return (self.augment(x) if self.augment else x), self.labels[i]


def stratified_split(labels: np.ndarray, fractions: Sequence[float], rng: np.random.Generator) -> list[np.ndarray]:
    """Indices of each split (the rest goes last), taking the same share of every class."""
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for k, frac in enumerate(fractions):
            n = int(round(frac * len(idx)))
            parts[k].extend(idx[start : start + n])
            start += n
        parts[-1].extend(idx[start:])
    return [np.sort(np.asarray(p, dtype=int)) for p in parts]


def digits_input(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Grey ``(N, 1, h, w)`` pixels in [0, 1] (ink bright) as the model sees them: ``size`` px, 3 channels, normalised."""
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels.expand(-1, 3, -1, -1) - mean) / std


class DigitsFile:
    """An image file as a digits input: grey levels scaled to [0, 1], then :func:`digits_input`."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        grey = torch.tensor(np.array(to_rgb(img).convert("L")), dtype=torch.float32) / 255.0
        return digits_input(grey[None, None], self.size)[0]


class DigitsData(ImageDataModule):
    """scikit-learn's 1,797 real 8x8 digits, upscaled to ``size`` px, 3 channels, normalised.

    ``classes`` picks the digits to use (relabelled 0..k-1 in that order), so one part of the
    digits can be a source task and another the target. The split is stratified and seeded:
    ``test_pct`` and ``valid_pct`` of each class, the rest for training, of which at most
    ``train_per_class`` images per class are kept (few labelled images).
    """

    decodes_files = False  # the digits are one in-memory tensor

    def __init__(
        self,
        size: int = 32,
        classes: Sequence[int] | None = None,
        train_per_class: int | None = None,
        valid_pct: float = 0.2,
        test_pct: float = 0.2,
        augment: bool = False,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, eval_batch_size)
        if size < 8:
            raise ConfigError("data.size", size, "must be >= 8 (the digits are 8x8)")
        chosen = list(range(10)) if classes is None else [int(c) for c in classes]
        if len(set(chosen)) < 2 or not set(chosen) <= set(range(10)):
            raise ConfigError("data.classes", classes, "two or more distinct digits from 0-9, or null for all")
        if not (0 < valid_pct and 0 < test_pct and valid_pct + test_pct < 1):
            raise ConfigError("data.valid_pct", valid_pct, "valid_pct and test_pct must be > 0 and sum below 1")
        if train_per_class is not None and train_per_class < 1:
            raise ConfigError("data.train_per_class", train_per_class, "must be >= 1 or null for all")
        self.size, self.chosen, self.train_per_class = size, chosen, train_per_class
        self.valid_pct, self.test_pct, self.augment, self.seed = valid_pct, test_pct, augment, seed
        self.classes = [str(c) for c in chosen]

    def eval_transform(self) -> DigitsFile:
        """Image files become digits inputs the way the 8x8 originals do (read as grey, ink bright)."""
        return DigitsFile(self.size)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        keep = np.isin(digits.target, self.chosen)
        relabel = {c: k for k, c in enumerate(self.chosen)}
        labels = np.array([relabel[c] for c in digits.target[keep]])
        images = digits_input(torch.as_tensor(digits.images[keep], dtype=torch.float32).unsqueeze(1) / 16.0, self.size)
        rng = np.random.default_rng(self.seed)
        test, val, train = stratified_split(labels, [self.test_pct, self.valid_pct], rng)
        if self.train_per_class is not None:
            per_class = [train[labels[train] == c][: self.train_per_class] for c in np.unique(labels)]
            train = np.sort(np.concatenate(per_class))
        augment = T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=[-m / s for m, s in zip(MEAN, STD)]) if self.augment else None
        y = torch.as_tensor(labels, dtype=torch.long)
        self.splits = {
            "train": TensorImages(images[train], y[train], augment),
            "val": TensorImages(images[val], y[val]),
            "test": TensorImages(images[test], y[test]),
        }


def unreadable(paths: Sequence[str | Path]) -> list[str]:
    """The files PIL cannot decode in full: ``verify()`` alone passes a truncated JPEG, which would
    then stop the run in the middle of an epoch, even with ``data.skip_bad_files``."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
        except Exception:
            bad.append(str(path))
    return bad


def drop_unreadable(paths: Sequence[str | Path], skip: bool, where: str) -> set[str]:
    """Unreadable files to leave out (``skip``), or one error listing them all."""
    bad = unreadable(paths)
    if bad and not skip:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(f"{len(bad)} unreadable image file(s) in {where}: {shown} (fix or remove them, or set data.skip_bad_files=true)")
    if bad:
        log.warning("skipped %d unreadable image file(s) in %s", len(bad), where)
    return set(bad)


def to_rgb(img: Image.Image) -> Image.Image:
    """Grey, palette, RGBA and 16-bit grey files all become 3-channel 8-bit images.

    PIL's ``convert`` clips 16-bit grey levels (0-65535) at 255, so such a PNG would turn white:
    they are scaled to 8 bits first.
    """
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        grey = np.asarray(img.convert("I"), dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def open_image(path: str) -> Image.Image:
    """An image file as 8-bit RGB (torchvision's own loader converts first, clipping 16-bit files)."""
    with Image.open(path) as img:
        return to_rgb(img)


def image_transforms(size: int, augment: bool) -> tuple[T.Compose, T.Compose]:
    """Train and evaluation transforms of the ImageNet weights (resize, centre crop, normalise).

    Evaluation is the weights' own preset at ``size``; training adds a random resized crop and a
    horizontal flip when ``augment`` is on.
    """
    preset = IMAGENET.transforms(crop_size=size, resize_size=round(size * 256 / 224))
    evaluate = T.Compose([to_rgb, preset])
    if not augment:
        return evaluate, evaluate
    train = T.Compose(
        [
            to_rgb,
            T.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(preset.mean, preset.std),
        ]
    )
    return train, evaluate


class ImageFolderData(ImageDataModule):
    """A ``root/{train,valid[,test]}/<class>/<image>`` tree, read with torchvision's ImageFolder.

    The classes are the train split's folders; every split must use the same ones. Without a
    ``test/`` folder the test part is a seeded ``test_pct`` (at least one image) of ``train/``, as
    Pets carves valid, and those images leave training: every run still reports test. An empty
    class folder or split is an error naming it; unreadable images are an error listing them, or
    are left out with a warning when ``skip_bad_files`` is true.
    """

    def __init__(
        self,
        root: str,
        size: int = 224,
        augment: bool = True,
        valid_name: str = "valid",
        test_pct: float = 0.1,
        skip_bad_files: bool = False,
        batch_size: int = 64,
        num_workers: int | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_size(size)
        if not 0 < test_pct < 1:
            raise ConfigError("data.test_pct", test_pct, "must be in (0, 1) (used only when there is no test/ folder)")
        self.root, self.size, self.augment = Path(root).expanduser(), size, augment
        self.valid_name, self.skip_bad_files = valid_name, skip_bad_files
        self.test_pct, self.seed = test_pct, seed
        self.test_folder = (self.root / "test").is_dir()

    def _split(self, name: str, transform) -> ImageFolder:
        folder = self.root / name
        if not folder.is_dir():
            layout = f"root/{{train,{self.valid_name}[,test]}}/<class>/<image>"
            raise DataError(f"data.root={self.root}: no {name}/ folder (expected {layout})")
        files = [p for p in folder.glob("*/*") if p.suffix.lower() in IMG_EXTENSIONS]
        if not files:
            raise DataError(f"split {folder} has no images (expected {folder}/<class>/<image>)")
        bad = drop_unreadable(files, self.skip_bad_files, str(folder))
        ds = ImageFolder(str(folder), transform=transform, loader=open_image, is_valid_file=lambda p: _is_image(p) and p not in bad, allow_empty=True)
        counts = Counter(ds.targets)
        empty = [c for k, c in enumerate(ds.classes) if counts[k] == 0]
        if empty:
            raise DataError(f"empty class folder(s) in {folder}: {', '.join(empty)}")
        return ds

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_tf, eval_tf = image_transforms(self.size, self.augment)
        names = {"train": "train", "val": self.valid_name} | ({"test": "test"} if self.test_folder else {})
        for split, name in names.items():
            # a train/ that test is carved from is read untransformed: each part brings its own transform
            ds = self._split(name, {"train": train_tf if self.test_folder else None}.get(split, eval_tf))
            if self.splits and ds.classes != self.splits["train"].classes:
                raise DataError(f"{self.root / name} has classes {ds.classes}, train has {self.splits['train'].classes}")
            self.splits[split] = ds
        train = self.splits["train"]
        self.classes = list(train.classes)
        if self.test_folder:
            return
        order = np.random.default_rng(self.seed).permutation(len(train))
        n_test = max(1, int(round(self.test_pct * len(order))))
        if n_test >= len(order):
            raise DataError(
                f"{self.root / 'train'} has {len(order)} image(s): too few to set data.test_pct={self.test_pct} "
                "of them aside for test and train on the rest (add images or a test/ folder)"
            )
        self.splits["train"] = Transformed(train, np.sort(order[n_test:]).tolist(), train_tf)
        self.splits["test"] = Transformed(train, np.sort(order[:n_test]).tolist(), eval_tf)


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS)


class Transformed(Dataset):
    """``dataset[indices]`` with ``transform`` applied to each image: one file list, two views."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform) -> None:
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.dataset[self.indices[i]]
        return self.transform(image), label


class PetsData(ImageDataModule):
    """Oxford-IIIT Pet (37 breeds) in torchvision's layout ``root/oxford-iiit-pet/{images,annotations}``.

    The validation split is a seeded ``valid_pct`` of ``trainval`` (fastai lesson 1 uses 20%); the
    test split is the dataset's own. Downloads only when ``download`` is true.
    """

    def __init__(
        self,
        root: str = "data",
        size: int = 224,
        augment: bool = True,
        valid_pct: float = 0.2,
        download: bool = False,
        skip_bad_files: bool = False,
        batch_size: int = 64,
        num_workers: int | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_size(size)
        if not 0 < valid_pct < 1:
            raise ConfigError("data.valid_pct", valid_pct, "must be in (0, 1)")
        self.root, self.size, self.augment, self.valid_pct = Path(root).expanduser(), size, augment, valid_pct
        self.download, self.skip_bad_files, self.seed = download, skip_bad_files, seed

    def _pets(self, split: str) -> OxfordIIITPet:
        try:
            ds = OxfordIIITPet(str(self.root), split=split, download=self.download)
        except RuntimeError as err:
            raise DataError(
                f"Oxford-IIIT Pet not found under {self.root / 'oxford-iiit-pet'} ({err}); set data.root to where it is, or data.download=true when online"
            ) from None
        except OSError as err:
            raise DataError(f"Oxford-IIIT Pet could not be downloaded to {self.root}: {err}") from None
        if not ds._images:
            raise DataError(f"split {split} of {self.root / 'oxford-iiit-pet'} has no images")
        missing = [str(p) for p in ds._images if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} image file(s) listed in {split}.txt are missing: {', '.join(missing[:10])}")
        bad = drop_unreadable(ds._images, self.skip_bad_files, f"{self.root} ({split})")
        if bad:
            keep = [k for k, p in enumerate(ds._images) if str(p) not in bad]
            ds._images = [ds._images[k] for k in keep]
            ds._labels = [ds._labels[k] for k in keep]
            ds._segs = [ds._segs[k] for k in keep]
            ds._bin_labels = [ds._bin_labels[k] for k in keep]
        return ds

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_tf, eval_tf = image_transforms(self.size, self.augment)
        trainval, test = self._pets("trainval"), self._pets("test")
        order = np.random.default_rng(self.seed).permutation(len(trainval))
        n_valid = max(1, int(round(self.valid_pct * len(order))))
        self.classes = list(trainval.classes)
        self.splits = {
            "train": Transformed(trainval, np.sort(order[n_valid:]).tolist(), train_tf),
            "val": Transformed(trainval, np.sort(order[:n_valid]).tolist(), eval_tf),
            "test": Transformed(test, range(len(test)), eval_tf),
        }


class ListedImages(Dataset):
    """Image files and their class indices, read and transformed per item."""

    def __init__(self, files: Sequence[str], labels: Sequence[int], transform) -> None:
        self.files, self.labels, self.transform = list(files), list(labels), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(open_image(self.files[i])), self.labels[i]


SPLIT_NAMES = {"train": "train", "valid": "val", "test": "test", "true": "val", "false": "train", "1": "val", "0": "train"}


class ImageCSVData(ImageDataModule):
    """Images listed in a table: a CSV with a file column and a label column (fastai's ``from_csv``).

    ``path_col`` holds each image's file, relative to ``root`` (default: the CSV's folder);
    ``label_col`` its class (the classes are the labels' sorted names). With ``split_col`` the
    table says each image's part: ``train``, ``valid`` or ``test`` (or fastai's ``is_valid``:
    true/1 is valid, false/0 train); without test rows a seeded ``test_pct`` of train is test.
    Without ``split_col``, seeded and stratified: ``test_pct`` and ``valid_pct`` of each class.
    Missing files are an error listing them; unreadable ones too, unless ``skip_bad_files``.
    """

    def __init__(
        self,
        path: str,
        root: str | None = None,
        path_col: str = "path",
        label_col: str = "label",
        split_col: str | None = None,
        valid_pct: float = 0.2,
        test_pct: float = 0.1,
        size: int = 224,
        augment: bool = True,
        skip_bad_files: bool = False,
        batch_size: int = 64,
        num_workers: int | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_size(size)
        for key, value in (("data.valid_pct", valid_pct), ("data.test_pct", test_pct)):
            if not 0 < value < 1:
                raise ConfigError(key, value, "must be in (0, 1)")
        self.path = Path(path).expanduser()
        self.root = Path(root).expanduser() if root else self.path.parent
        self.columns = {"data.path_col": path_col, "data.label_col": label_col} | ({"data.split_col": split_col} if split_col else {})
        self.valid_pct, self.test_pct, self.size, self.augment = valid_pct, test_pct, size, augment
        self.skip_bad_files, self.seed = skip_bad_files, seed

    def _rows(self) -> tuple[dict[str, list[str]], list[str]]:
        """The table's named columns, and where each row is (``FILE:LINE``)."""
        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "no such file"
            raise DataError(f"data.path={self.path}: {what} (a CSV with {', '.join(self.columns.values())} columns)")
        values: dict[str, list[str]] = {key: [] for key in self.columns}
        where: list[str] = []
        try:
            with open(self.path, encoding="utf-8-sig", newline="") as f:
                rows = csv.DictReader(f)
                header = rows.fieldnames or []
                for key, name in self.columns.items():
                    if name not in header:
                        raise DataError(f"{self.path}: no column {name!r} ({key}); its header has: {', '.join(header) or 'nothing'}")
                for row in rows:
                    if not any((v or "").strip() for v in row.values()):
                        continue
                    for key, name in self.columns.items():
                        values[key].append((row[name] or "").strip())
                    where.append(f"{self.path}:{rows.line_num}")
        except UnicodeDecodeError as err:
            raise DataError(f"{self.path}: not UTF-8 text (byte {err.object[err.start]:#04x}; a Latin-1 file?): save it as UTF-8") from None
        if not where:
            raise DataError(f"{self.path}: no images listed")
        return values, where

    def _parts(self, labels: np.ndarray, named: list[str] | None, where: list[str]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        if named is None:
            test, val, train = stratified_split(labels, [self.test_pct, self.valid_pct], rng)
            return {"train": train, "val": val, "test": test}
        parts = []
        for k, name in enumerate(named):
            if name.lower() not in SPLIT_NAMES:
                raise DataError(f"{where[k]}: split {name!r} is not train, valid or test (or true/false as fastai's is_valid) (data.split_col)")
            parts.append(SPLIT_NAMES[name.lower()])
        part = np.array(parts)
        out = {split: np.flatnonzero(part == split) for split in ("train", "val", "test")}
        if not len(out["val"]):
            raise DataError(f"{self.path}: no image is marked valid in column {self.columns['data.split_col']!r}")
        if not len(out["test"]):
            order = rng.permutation(out["train"])
            n_test = max(1, int(round(self.test_pct * len(order))))
            out["train"], out["test"] = np.sort(order[n_test:]), np.sort(order[:n_test])
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        values, where = self._rows()
        names = values["data.label_col"]
        empty = next((k for k, v in enumerate(names) if not v), None)
        if empty is not None:
            raise DataError(f"{where[empty]}: empty label")
        self.classes = sorted(set(names))
        if len(self.classes) < 2:
            raise DataError(f"{self.path}: one class only ({self.classes[0]!r}); a classifier needs two or more")
        labels = np.array([self.classes.index(n) for n in names])
        files = [str(self.root / v) for v in values["data.path_col"]]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(f"{len(missing)} image file(s) listed in {self.path} are missing (data.root={self.root}): {shown}")
        parts = self._parts(labels, values.get("data.split_col"), where)
        bad = drop_unreadable(files, self.skip_bad_files, str(self.path))
        train_tf, eval_tf = image_transforms(self.size, self.augment)
        for split, idx in parts.items():
            keep = [k for k in idx if files[k] not in bad]
            if not keep:
                raise DataError(f"{self.path}: the {split} part holds no images (data.split_col, data.valid_pct, data.test_pct)")
            self.splits[split] = ListedImages([files[k] for k in keep], labels[keep].tolist(), train_tf if split == "train" else eval_tf)
        unseen = sorted(
            {self.classes[c] for split in ("val", "test") for c in self.splits[split].labels} - {self.classes[c] for c in self.splits["train"].labels}
        )
        if unseen:
            raise DataError(f"{self.path}: class(es) {', '.join(unseen)} have no training image: list some as train")
