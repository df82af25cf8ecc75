"""RunLog: the step log, TensorBoard events, metrics.json, and the trim on resume."""

from __future__ import annotations

import json

import pytest

from recformer.run_log import RunLog


def record(step: int, stage: int = 1) -> dict:
    return {"stage": stage, "epoch": 0, "step": step, "loss": 1.0 / step, "lr": 0.1, "seqs_per_s": 5.0, "tokens_per_s": 9.0}


def steps(log: RunLog) -> list[int]:
    return [json.loads(line)["step"] for line in log.step_log.read_text().splitlines()]


def test_steps_metrics_and_events_are_written(tmp_path):
    log = RunLog(tmp_path)
    for step in (1, 2, 3):
        log.log_step(record(step))
    log.log_dev({"NDCG@10": 0.5}, step=3)
    log.write_metrics({"dev": [{"step": 3, "NDCG@10": 0.5}], "test": None})
    log.close()
    assert [json.loads(line) for line in log.step_log.read_text().splitlines()] == [record(s) for s in (1, 2, 3)]
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"dev": [{"step": 3, "NDCG@10": 0.5}], "test": None}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_trim_on_resume_drops_later_steps_and_purges_events(tmp_path):
    log = RunLog(tmp_path)
    for step in range(1, 6):
        log.log_step(record(step))
    log.close()
    resumed = RunLog(tmp_path)
    resumed.trim(3)
    assert steps(resumed) == [1, 2, 3]
    resumed.log_step({**record(4), "loss": 42.0})
    resumed.close()
    assert steps(resumed) == [1, 2, 3, 4]
    # TensorBoard drops the first run's events after step 3 too: step 4 has the resumed run's loss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert losses == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3)), (4, 42.0)]


def test_trim_without_a_log_and_start_fresh(tmp_path):
    log = RunLog(tmp_path)
    log.trim(10)  # nothing logged yet: nothing to trim
    assert not log.step_log.exists()
    log.log_step(record(1))
    log.start_fresh()
    assert not log.step_log.exists()
    log.close()
