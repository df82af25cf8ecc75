"""RunLog: the step log, TensorBoard events, metrics.json, and the trim on resume."""

from __future__ import annotations

import json

from recformer.train.run_log import RunLog


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
    first_files = set((tmp_path / "tensorboard").iterdir())
    resumed = RunLog(tmp_path)
    resumed.trim(3)
    assert steps(resumed) == [1, 2, 3]
    resumed.log_step({**record(4), "loss": 42.0})
    resumed.close()
    assert steps(resumed) == [1, 2, 3, 4]
    # The resumed run's event file starts with a session START at step 4: TensorBoard then drops the
    # first run's events from step 4 on.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    (new_file,) = set((tmp_path / "tensorboard").iterdir()) - first_files
    events = list(EventFileLoader(str(new_file)).Load())
    starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [4]
    assert [e.step for e in events for v in e.summary.value if v.tag == "train/loss"] == [4]


def test_trim_without_a_log_and_start_fresh(tmp_path):
    log = RunLog(tmp_path)
    log.trim(10)  # nothing logged yet: nothing to trim
    assert not log.step_log.exists()
    log.log_step(record(1))
    log.start_fresh()
    assert not log.step_log.exists()
    log.close()
