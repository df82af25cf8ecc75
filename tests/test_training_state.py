"""TrainingState: the resume file round-trips everything and loads with weights_only=True."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from recformer import RecformerForSeqRec
from recformer.train.optimization import parameter_groups
from recformer.train.training_state import ResumeError, TrainingState, fingerprint_differences

from .helpers import crafted_checkpoint

FINGERPRINT = {"flags": {"seed": 42, "learning_rate": 1e-3, "metric_ks": [10, 50]}, "files": {"data file train.json": "ab" * 8},
               "config": {"hidden_size": 32}, "device": {"type": "cpu"}}  # fmt: skip


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
    state.save(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, args={"seed": 42, "ks": [10]},
               fingerprint=FINGERPRINT)  # fmt: skip
    expected_draws = draws()
    one_step(model, optimizer, scheduler)  # what happens after the save must not leak into the restore

    fresh = training_objects(config, seed=9)
    seed_all(7)
    restored, args = TrainingState.load(path, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2], scaler=fresh[3],
                                        fingerprint=FINGERPRINT)  # fmt: skip
    assert restored == state and args == {"seed": 42, "ks": [10]}
    assert draws() == expected_draws
    saved = torch.load(path, weights_only=True)["model"]
    for key, value in fresh[0].state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert fresh[0].config.item_num == 6
    assert fresh[2].state_dict()["last_epoch"] == 1 and fresh[2].get_last_lr() == [5e-4, 5e-4]  # one warm-up step of 2
    # the optimizer continues exactly: one more step from both gives the same weights
    twin = training_objects(config, seed=9)
    TrainingState.load(path, model=twin[0], optimizer=twin[1], scheduler=twin[2], scaler=twin[3], fingerprint=FINGERPRINT)
    one_step(fresh[0], fresh[1], fresh[2])
    one_step(twin[0], twin[1], twin[2])
    for a, b in zip(fresh[0].parameters(), twin[0].parameters()):
        assert torch.equal(a, b)


def test_the_file_holds_only_tensors_and_plain_containers(tmp_path, config):
    model, optimizer, scheduler, scaler = training_objects(config, seed=0)
    path = tmp_path / "training_state.pt"
    TrainingState().save(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, args={},
                         fingerprint=FINGERPRINT)  # fmt: skip
    payload = torch.load(path, weights_only=True)  # raises on any pickled Python object
    assert set(payload) == {"state", "model", "optimizer", "scheduler", "scaler", "rng", "args", "fingerprint"}
    assert payload["fingerprint"] == FINGERPRINT
    name, keys, pos, has_gauss, cached = payload["rng"]["numpy"]
    assert name == "MT19937" and isinstance(keys, list) and len(keys) == 624 and isinstance(pos, int)
    assert isinstance(payload["rng"]["torch"], torch.Tensor)
    assert payload["state"] == {"stage": 1, "epoch": -1, "global_step": 0, "patience": 0, "best_target": float("-inf"),
                                "metrics": {"zero_shot_test": None, "dev": [], "best_dev": None, "test": None},
                                "done": False}  # fmt: skip


def load_into(objects, path, fingerprint=FINGERPRINT):
    model, optimizer, scheduler, scaler = objects
    return TrainingState.load(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                              fingerprint=fingerprint)  # fmt: skip


def weights(objects) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in objects[0].state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def saved_state(tmp_path, config):
    model, optimizer, scheduler, scaler = training_objects(config, seed=3)
    path = tmp_path / "training_state.pt"
    TrainingState(epoch=2).save(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, args={},
                                fingerprint=FINGERPRINT)  # fmt: skip
    return path


START_FRESH = "; to start fresh, run without --resume$"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", r"not a complete PyTorch checkpoint file \(damaged, truncated or another format\)"),
        ("empty", r"not a complete PyTorch checkpoint file \(damaged, truncated or another format\)"),
        ("ndarray", r"refused: it holds Python objects besides tensors and plain data \(numpy\..*\)"
                    r", and unpickling them could run code"),
        ("model file", r"not a finetuning resume file of this version \(expected the keys state, model, optimizer, "
                       r"scheduler, scaler, rng, args, fingerprint; found keys \[item_embedding.weight, longformer\..*"),
        ("older version", r"not a finetuning resume file of this version \(.*found keys \[args, model, optimizer, rng, "
                          r"scaler, scheduler, state\]\)"),
        ("list", r"not a finetuning resume file of this version \(.*; found list\)"),
    ],
)
def test_an_unusable_resume_file_is_one_clear_line(tmp_path, config, damage, message):
    path = saved_state(tmp_path, config)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "ndarray":
        torch.save({"state": {}, "rng": np.random.get_state()}, path)
    elif damage == "model file":
        torch.save(training_objects(config, seed=0)[0].state_dict(), path)
    elif damage == "older version":  # what this package wrote before the fingerprint
        payload = torch.load(path, weights_only=True)
        del payload["fingerprint"]
        torch.save(payload, path)
    else:
        torch.save([1, 2], path)
    objects = training_objects(config, seed=0)
    before = weights(objects)
    with pytest.raises(ResumeError, match=f"^{path}: {message}{START_FRESH}") as e:
        load_into(objects, path)
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)
    assert same_weights(weights(objects), before)


def test_a_crafted_resume_file_is_refused_and_runs_nothing(tmp_path, config):
    marker = tmp_path / "code-ran"
    path = crafted_checkpoint(tmp_path / "training_state.pt", marker)
    with pytest.raises(ResumeError, match=f"^{path}: refused: it holds Python objects"):
        load_into(training_objects(config, seed=0), path)
    assert not marker.exists()


def test_a_resume_file_of_another_model_size_is_one_clear_line(tmp_path, config):
    path = saved_state(tmp_path, config)
    other = config.__class__.from_dict({**config.to_dict(), "hidden_size": 48, "intermediate_size": 40})
    with pytest.raises(ResumeError, match=f"^{path}: does not fit this run \\(CheckpointError: .*\\){START_FRESH}"):
        load_into(training_objects(other, seed=0), path)


def test_a_different_fingerprint_is_refused_naming_every_difference_before_anything_is_restored(tmp_path, config):
    path = saved_state(tmp_path, config)
    now = {
        "flags": {**FINGERPRINT["flags"], "learning_rate": 5e-4},
        "files": {"data file train.json": "cd" * 8},
        "config": {"hidden_size": 32},
        "device": {"type": "cuda"},
    }
    objects = training_objects(config, seed=0)
    before = weights(objects)
    with pytest.raises(ResumeError) as e:
        load_into(objects, path, fingerprint=now)
    expected = (
        f"{path} was saved by a run with other inputs or flags: device type was 'cpu', now 'cuda'; "
        "data file train.json changed (content sha256 abababababab... -> cdcdcdcdcdcd...); "
        "--learning_rate was 0.001, now 0.0005; to start fresh, run without --resume"
    )
    assert str(e.value) == expected
    assert same_weights(weights(objects), before)


def test_fingerprint_differences():
    assert fingerprint_differences(FINGERPRINT, FINGERPRINT) == []
    assert fingerprint_differences(FINGERPRINT, {**FINGERPRINT, "flags": {"seed": 42, "metric_ks": [10]}}) == [
        "--learning_rate was 0.001, now '<absent>'",
        "--metric_ks was [10, 50], now [10]",
    ]
    assert fingerprint_differences({"config": {"temp": 0.05}}, {"config": {"temp": 0.1}}) == ["config temp was 0.05, now 0.1"]


def test_a_resume_file_from_before_stage2_schedule_existed_ran_the_shared_schedule():
    from recformer.train.training_state import fingerprint_differences

    before = {"flags": {"learning_rate": 5e-5}}
    assert fingerprint_differences(before, {"flags": {"learning_rate": 5e-5, "stage2_schedule": "shared"}}) == []
    assert fingerprint_differences(before, {"flags": {"learning_rate": 5e-5, "stage2_schedule": "restart"}}) == [
        "--stage2_schedule was 'shared', now 'restart'"
    ]
