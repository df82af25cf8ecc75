"""TrainingState: the resume file round-trips everything and loads with weights_only=True."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from recformer import RecformerForSeqRec
from recformer.optimization import parameter_groups
from recformer.training_state import TrainingState


def training_objects(config, seed: int):
    torch.manual_seed(seed)
    model = RecformerForSeqRec(config)
    model.init_item_embedding(torch.randn(6, config.hidden_size))
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-3)
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, 10)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return model, optimizer, scheduler, scaler


def one_step(model, optimizer, scheduler):
    loss = sum(p.float().pow(2).sum() for p in model.parameters() if p.requires_grad)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_round_trip_restores_model_optimizer_schedule_and_random_generators(tmp_path, config):
    model, optimizer, scheduler, scaler = training_objects(config, seed=0)
    one_step(model, optimizer, scheduler)
    state = TrainingState(stage=2, epoch=4, global_step=17, patience=2, best_target=0.25,
                          metrics={"zero_shot_test": {"MRR": 0.1}, "dev": [{"step": 17}], "best_dev": None, "test": None})  # fmt: skip
    seed_all(1)
    path = tmp_path / "training_state.pt"
    state.save(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, args={"seed": 42, "ks": [10]})
    expected_draws = draws()
    one_step(model, optimizer, scheduler)  # what happens after the save must not leak into the restore

    fresh = training_objects(config, seed=9)
    seed_all(7)
    restored, args = TrainingState.load(path, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2], scaler=fresh[3])
    assert restored == state and args == {"seed": 42, "ks": [10]}
    assert draws() == expected_draws
    saved = torch.load(path, weights_only=True)["model"]
    for key, value in fresh[0].state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert fresh[0].config.item_num == 6
    assert fresh[2].state_dict()["last_epoch"] == 1 and fresh[2].get_last_lr() == [5e-4, 5e-4]  # one warm-up step of 2
    # the optimizer continues exactly: one more step from both gives the same weights
    twin = training_objects(config, seed=9)
    TrainingState.load(path, model=twin[0], optimizer=twin[1], scheduler=twin[2], scaler=twin[3])
    one_step(fresh[0], fresh[1], fresh[2])
    one_step(twin[0], twin[1], twin[2])
    for a, b in zip(fresh[0].parameters(), twin[0].parameters()):
        assert torch.equal(a, b)


def test_the_file_holds_only_tensors_and_plain_containers(tmp_path, config):
    model, optimizer, scheduler, scaler = training_objects(config, seed=0)
    path = tmp_path / "training_state.pt"
    TrainingState().save(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, args={})
    payload = torch.load(path, weights_only=True)  # raises on any pickled Python object
    assert set(payload) == {"state", "model", "optimizer", "scheduler", "scaler", "rng", "args"}
    name, keys, pos, has_gauss, cached = payload["rng"]["numpy"]
    assert name == "MT19937" and isinstance(keys, list) and len(keys) == 624 and isinstance(pos, int)
    assert isinstance(payload["rng"]["torch"], torch.Tensor)
    assert payload["state"] == {"stage": 1, "epoch": -1, "global_step": 0, "patience": 0, "best_target": float("-inf"),
                                "metrics": {"zero_shot_test": None, "dev": [], "best_dev": None, "test": None},
                                "done": False}  # fmt: skip


def test_unreadable_file_is_a_clear_error(tmp_path, config):
    path = tmp_path / "training_state.pt"
    torch.save({"state": {}, "rng": np.random.get_state()}, path)  # an ndarray: refused by weights_only
    model, optimizer, scheduler, scaler = training_objects(config, seed=0)
    with pytest.raises(ValueError, match="training_state.pt: cannot be read as a finetuning resume file"):
        TrainingState.load(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
