"""refit: true: valid chooses, a fresh model trains on exactly train + valid for the chosen epochs, test is read once at the end."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from stagetune.app import conf_dir
from stagetune.collab.data import RatingsDataModule
from stagetune.collab.models import RatingModule
from stagetune.errors import ConfigError
from stagetune.runs.refit import cut_plan
from stagetune.runs.run import train

SMALL = ["experiment=ratings_synthetic", "data.n_ratings=3000", "data.batch_size=256", "trainer.enable_progress_bar=false", "logger=none"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def rows(part) -> list[tuple[int, int, float]]:
    return sorted(zip(part.users.tolist(), part.items.tolist(), part.ratings.tolist()))


@pytest.fixture
def reads(monkeypatch):
    """What the run reads, in order: ("train", the training part's rows, valid's rows) for each
    training loader, ("step",) for each training step, ("test", n) for each test batch a model scores."""
    seen = []
    train_loader, training_step, test_step = RatingsDataModule.train_dataloader, RatingModule.training_step, RatingModule.test_step

    def spy_loader(self):
        seen.append(("train", rows(self.train_set), rows(self.val_set)))
        return train_loader(self)

    def spy_step(self, batch, batch_idx):
        seen.append(("step",))
        return training_step(self, batch, batch_idx)

    def spy_test(self, batch, batch_idx):
        seen.append(("test", len(batch[2])))
        return test_step(self, batch, batch_idx)

    monkeypatch.setattr(RatingsDataModule, "train_dataloader", spy_loader)
    monkeypatch.setattr(RatingModule, "training_step", spy_step)
    monkeypatch.setattr(RatingModule, "test_step", spy_test)
    return seen


def test_refit_trains_on_train_plus_valid_for_the_chosen_epochs_and_reads_test_once_at_the_end(tmp_path, reads):
    torch.set_num_threads(1)
    # lr 0.2 overfits early: valid chooses an epoch before the last, so the cut is seen
    train(composed(*SMALL, "refit=true", "plan.lr=0.2", "optim.wd=0", "plan.stages.all.epochs=6"), tmp_path)
    record = json.loads((tmp_path / "metrics.json").read_text())
    best = torch.load(tmp_path / record["best"]["checkpoint"], weights_only=True)  # recorded relative to the run
    chosen = best["epoch"] + 1
    assert chosen < 6 and record["refit"]["epochs"] == chosen
    assert len((tmp_path / "refit" / "history.csv").read_text().splitlines()) == 1 + chosen
    trains = [r for r in reads if r[0] == "train"]
    first, refit = trains[0], trains[-1]
    assert refit[1] == sorted(first[1] + first[2]) and record["refit"]["n_train"] == len(first[1]) + len(first[2])
    kinds = [r[0] for r in reads]
    last_step = len(kinds) - 1 - kinds[::-1].index("step")
    assert "test" not in kinds[:last_step] and sum(r[1] for r in reads if r[0] == "test") == record["data"]["n_test"]
    assert record["test"] == record["refit"]["test"] and record["test"]["test/rmse"] > 0
    assert record["valid"]["val/rmse"] == pytest.approx(record["metric"]["best"])  # the chosen valid figures stay
    refit_model = torch.load(tmp_path / "refit" / "refit.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(refit_model["user_factors.weight"], best["state_dict"]["user_factors.weight"])


def test_cut_plan_keeps_the_first_epochs_of_the_stages_in_order():
    cfg = composed("experiment=movielens", "plan=fine_tune")
    names = list(cfg.plan.stages)
    assert [cfg.plan.stages[n].epochs for n in names][0] == 1
    total = sum(cfg.plan.stages[n].epochs for n in names)
    cut = cut_plan(cfg, 3)
    assert [cut.plan.stages[n].epochs for n in cut.plan.stages] == [1, 2] and sum(cfg.plan.stages[n].epochs for n in names) == total
    assert list(cut_plan(cfg, 1).plan.stages) == names[:1]


def test_refit_on_data_that_cannot_give_valid_back_is_a_config_error(tmp_path):
    cfg = composed("experiment=sgd_line", "refit=true", "trainer.enable_progress_bar=false", "logger=none")
    with pytest.raises(ConfigError, match=r"^refit=True: .*cannot give its valid part back"):
        train(cfg, tmp_path)
