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


def test_console_log_keeps_each_line_as_it_finally_stood(tmp_path, capsys):
    import sys

    from recformer.train.run_log import ConsoleLog

    with ConsoleLog() as console:
        print("before the folder is known")
        sys.stderr.write("\rstage 1 epoch 0:   0%| 0/3\rstage 1 epoch 0:  33%| 1/3\rstage 1 epoch 0: 100%| 3/3\n")
        console.attach(tmp_path / "run.log")
        sys.stderr.write("\revaluate:  50%| 1/2\r                    \r")  # a bar cleared from its line (leave=False)
        print("INFO zero-shot test: NDCG@10 0.1")
        sys.stdout.write("no newline at the end")
    assert (tmp_path / "run.log").read_text() == (
        "before the folder is known\nstage 1 epoch 0: 100%| 3/3\nINFO zero-shot test: NDCG@10 0.1\nno newline at the end\n"
    )
    shown = capsys.readouterr()
    assert "\rstage 1 epoch 0:  33%| 1/3" in shown.err and "no newline at the end" in shown.out  # the console is unchanged
    with ConsoleLog() as console:
        console.attach(tmp_path / "run.log", append=True)  # a resumed run continues the log
        print("resumed")
    assert (tmp_path / "run.log").read_text().endswith("no newline at the end\nresumed\n")
    with ConsoleLog():
        print("a refused folder: nothing is written anywhere")
    assert "refused" not in (tmp_path / "run.log").read_text()


def test_start_fresh_forgets_the_metrics_and_events_of_an_earlier_run(tmp_path):
    log = RunLog(tmp_path)
    log.log_step(record(1))
    log.write_metrics({"test": None})
    log.close()
    assert (tmp_path / "tensorboard").is_dir()
    RunLog(tmp_path).start_fresh()
    assert not log.step_log.exists() and not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "tensorboard").exists()
