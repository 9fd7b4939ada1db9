"""The real MovieLens-100k, offline: the copy the ``recbole`` wheel ships, taken as files only.

``recbole`` (MIT) ships all of ML-100k under ``recbole/dataset_example/ml-100k/``:
``ml-100k.inter`` holds the 100,000 ratings with their timestamps in ``u.data``'s line order (so
GroupLens's u1-u5/ua/ub folds can be rebuilt exactly), ``ml-100k.item`` the titles, years and genres, ``ml-100k.user`` the users' age, gender and occupation.
Set-up (``make data``, also run by the Makefile's install step) downloads the pinned wheel with
pip, without its dependencies, and unpacks only those files into the user cache; recbole itself is
never installed nor imported. Loading checks the pinned SHA-256 of each file first, then reads
the ratings into memory as ``u.data`` would give them.

    python -m stagetune.collab.bundled            # fetch into the cache (once, online)
    python -m stagetune.collab.bundled --wheel F  # or unpack an already downloaded wheel F
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from stagetune.collab.side import RawSide, read_recbole
from stagetune.collab.splits import Ratings
from stagetune.errors import DataError

RECBOLE = "recbole==1.2.1"
WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"
RATINGS = "ml-100k.inter"
ITEMS = "ml-100k.item"
USERS = "ml-100k.user"
SHA256 = {
    RATINGS: "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    ITEMS: "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    USERS: "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
REFETCH = "make data (python -m stagetune.collab.bundled)"


def cache_dir() -> Path:
    """Where stagetune keeps data it set up: ``$STAGETUNE_CACHE``, else ``$XDG_CACHE_HOME/stagetune``, else ``~/.cache/stagetune``."""
    if os.environ.get("STAGETUNE_CACHE"):
        return Path(os.environ["STAGETUNE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "stagetune"


def folder() -> Path:
    """The bundled ML-100k's folder in the cache (named after the wheel it came from)."""
    return cache_dir() / f"ml-100k-{RECBOLE.replace('==', '-')}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checked(name: str) -> Path:
    """The cached file ``name`` after its SHA-256 matched the pinned one; one-line error otherwise."""
    path = folder() / name
    if not path.is_file():
        raise DataError(f"the bundled MovieLens-100k is not set up ({path} missing): run {REFETCH} once, or set data.path")
    digest = sha256(path)
    if digest != SHA256[name]:
        raise DataError(f"{path} has SHA-256 {digest}, expected {SHA256[name]}: delete it and re-fetch with {REFETCH}")
    return path


def read_ratings() -> Ratings:
    """The 100,000 ratings in ``u.data``'s line order (header ``user_id:token<TAB>...`` skipped)."""
    body = checked(RATINGS).read_text(encoding="utf-8").split("\n", 1)[1]
    table = np.array(body.split(), dtype=np.int64).reshape(-1, 4)
    return Ratings(table[:, 0], table[:, 1], table[:, 2].astype(np.float32), table[:, 3])


def read_titles() -> dict[int, str]:
    """Item id -> ``Title (year)`` as ``u.item`` writes it (recbole keeps the year in its own column)."""
    titles: dict[int, str] = {}
    for line in checked(ITEMS).read_text(encoding="utf-8").splitlines()[1:]:
        item, title, year = line.split("\t")[:3]
        titles[int(item)] = f"{title} ({year})" if year.isdigit() else title
    return titles


def read_side() -> dict[str, RawSide]:
    """The items' genres and years and the users' age, gender and occupation (:mod:`.side`)."""
    return read_recbole(checked(ITEMS), checked(USERS))


def unpack(wheel: Path, dest: Path) -> None:
    """Copy the ML-100k files out of ``wheel`` into ``dest``, only once every SHA-256 matched."""
    with zipfile.ZipFile(wheel) as z:
        files = {name: z.read(WHEEL_FOLDER + name) for name in SHA256}
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHA256[name]:
            raise DataError(f"{wheel}: {name} has SHA-256 {digest}, expected {SHA256[name]}; nothing written")
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        partial = dest / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(dest / name)


def fetch(wheel: Path | None = None) -> Path:
    """Set up the bundled ML-100k in the cache (nothing to do when it is there and intact)."""
    dest = folder()
    if all((dest / name).is_file() and sha256(dest / name) == digest for name, digest in SHA256.items()):
        return dest
    if wheel is not None:
        unpack(wheel, dest)
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", RECBOLE, "--no-deps", "--only-binary=:all:", "--quiet", "-d", tmp]
        if subprocess.run(command).returncode != 0:
            raise DataError(f"pip could not download {RECBOLE} (offline?); set data.path to GroupLens's ml-100k files instead")
        unpack(next(Path(tmp).glob("recbole-*.whl")), dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stagetune.collab.bundled", description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"an already downloaded {RECBOLE} wheel to unpack")
    args = parser.parse_args(argv)
    try:
        print(f"MovieLens-100k ready in {fetch(args.wheel)}")
    except DataError as err:
        print(f"stagetune: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
