"""finetune.py and evaluate.py under torchrun: 2 CPU processes (gloo) give the numbers of 1 process.

Every 2-process run is a real `torchrun --standalone --nproc_per_node 2` subprocess (tests/dist_worker.py);
the 1-process references run in this process. The model has no dropout and training uses the full
softmax, so both runs compute the same global batches and differ only by float rounding.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from recformer.argparsing import parse_command_line
from recformer.args import EvaluateArgs, FinetuneArgs
from recformer.cli import evaluate as evaluate_cli
from recformer.inference.checkpoint_eval import evaluate_checkpoint
from recformer.train.finetune import Finetuner

from .finetune_fixtures import make_dataset, make_model_folder, make_pretrained_checkpoint

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "dist_worker.py"
USERS, ITEMS = 41, 31  # odd: the last evaluation shard and the last item shard are the larger ones
# 41 users in global batches of 16: steps of 16, 16 and 9 users (the last one split 4 + 5 over 2 ranks).
GLOBAL_BATCH = 16


def torchrun(command: str, *argv: str, env: dict[str, str] | None = None, timeout: float = 180):
    """`torchrun --nproc_per_node 2 dist_worker.py command argv`: (exit code, stdout, stderr, seconds)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           command, *argv]  # fmt: skip
    # The workers use as many threads as this process: CPU kernels round differently with another
    # thread count (a few 1e-6 on the tiny encoder), which is not what these tests compare.
    threads = str(torch.get_num_threads())
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", **(env or {})}  # fmt: skip
    t0 = time.perf_counter()
    # Output goes to files, not pipes: a hung worker (torchrun starts each in a session of its own) would
    # hold a pipe open forever; on a timeout, every process of the launch is killed by its environment mark.
    mark = f"recformer-test-{os.getpid()}-{time.monotonic_ns()}"
    full_env["RECFORMER_TEST_LAUNCH"] = mark
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        launch = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=full_env)
        timed_out = False
        try:
            launch.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_marked(mark)
            launch.wait()
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if timed_out:
        pytest.fail(f"torchrun {command} did not end within {timeout} s:\n{stderr[-3000:]}")
    return launch.returncode, stdout, stderr, time.perf_counter() - t0


def kill_marked(mark: str) -> None:
    """SIGKILL every process whose environment holds RECFORMER_TEST_LAUNCH=`mark` (Linux /proc)."""
    needle = f"RECFORMER_TEST_LAUNCH={mark}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    model = make_model_folder(root)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    return {"model": model, "ckpt": make_pretrained_checkpoint(root), "data": make_dataset(root, users=USERS, items=ITEMS),
            "root": root}  # fmt: skip


def flags(assets, out: Path, *extra: str, data: Path | None = None) -> list[str]:
    """finetune.py flags of the 2-process runs: global batch 16 = 8 per process x 1 step x 2 processes."""
    return ["--pretrain_ckpt", str(assets["ckpt"]), "--data_path", str(data or assets["data"]), "--model_name_or_path",
            str(assets["model"]), "--output_dir", str(out), "--num_train_epochs", "3", "--verbose", "1", "--batch_size",
            "8", "--finetune_negative_sample_size", "-1", "--warmup_steps", "2", "--learning_rate", "1e-3", "--device",
            "cpu", "--no_progress", "--eval_batch_size", "7", "--global_batch_size", str(GLOBAL_BATCH), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def one_process(assets):
    """The reference: 1 process, batch 8 x 2 accumulation steps = the same global batch of 16."""
    out = assets["root"] / "one"
    args = FinetuneArgs(
        pretrain_ckpt=str(assets["ckpt"]), data_path=str(assets["data"]), model_name_or_path=str(assets["model"]),
        output_dir=str(out), num_train_epochs=3, verbose=1, batch_size=8, gradient_accumulation_steps=2,
        finetune_negative_sample_size=-1, warmup_steps=2, learning_rate=1e-3, device="cpu", progress=False,
        eval_batch_size=7,
    )  # fmt: skip
    return out / "Tiny", Finetuner(args).run()


@pytest.fixture(scope="module")
def two_processes(assets):
    out = assets["root"] / "two"
    code, stdout, stderr, _ = torchrun("finetune", *flags(assets, out))
    assert code == 0, stderr
    return out / "Tiny", json.loads((out / "Tiny" / "metrics.json").read_text()), stdout, stderr


def step_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in records]


def item_table(folder: Path) -> torch.Tensor:
    (path,) = (folder / "cache").glob("item_table-*.pt")
    return torch.load(path, weights_only=True)


def test_two_processes_log_the_losses_and_reach_the_metrics_of_one(one_process, two_processes):
    (one, one_metrics), (two, two_metrics, stdout, stderr) = one_process, two_processes
    one_log, two_log = step_log(one), step_log(two)
    assert [r["step"] for r in two_log] == [r["step"] for r in one_log] == list(range(1, len(one_log) + 1))
    assert [r["sequences"] for r in two_log[:3]] == [16, 16, 9]  # the last global batch is uneven
    assert [r["loss"] for r in two_log] == pytest.approx([r["loss"] for r in one_log], rel=1e-4)
    assert two_metrics["test"] == pytest.approx(one_metrics["test"], abs=1e-3)
    assert [d["NDCG@10"] for d in two_metrics["dev"]] == pytest.approx([d["NDCG@10"] for d in one_metrics["dev"]],
                                                                       abs=1e-3)  # fmt: skip
    assert "global batch 16 = 8 sequences x 1 accumulation steps x 2 processes" in stderr
    assert stdout.count("finetuned test") == 1  # rank 0 prints the table, rank 1 nothing


def test_two_process_zero_shot_evaluation_and_item_table_equal_one_process(one_process, two_processes):
    (one, one_metrics), (two, two_metrics, _, _) = one_process, two_processes
    # 41 test users ranked in shards of 20 and 21; 31 items in 5 batches of <= 7, encoded 2 + 3 batches
    assert two_metrics["zero_shot_test"] == pytest.approx(one_metrics["zero_shot_test"], abs=1e-6)
    one_table, two_table = item_table(one), item_table(two)
    assert two_table.shape == (ITEMS, 32)
    torch.testing.assert_close(two_table, one_table, rtol=0, atol=1e-6)


def test_only_rank_zero_writes(two_processes):
    folder, metrics, _, _ = two_processes
    names = {p.name for p in folder.iterdir()}
    assert {
        "metrics.json",
        "best_model.bin",
        "best_model",
        "train_log.jsonl",
        "training_state.pt",
        "args.json",
    } <= names
    assert not any(
        name.startswith(".") or name.endswith(".tmp") for name in names
    )  # no leftover temporary file
    assert len(step_log(folder)) == len({r["step"] for r in step_log(folder)})  # each step logged once


def test_evaluate_py_under_torchrun_equals_one_process(assets, one_process, tmp_path):
    folder, _ = one_process
    common = ["--ckpt", str(folder / "best_model.bin"), "--data_path", str(assets["data"]), "--model_name_or_path",
              str(assets["model"]), "--device", "cpu", "--batch_size", "7", "--no_progress", "--reencode_items"]  # fmt: skip
    parsed = parse_command_line(EvaluateArgs, evaluate_cli.build_parser(), [*common, "--cache_dir", str(tmp_path / "c1")])
    one = evaluate_checkpoint(parsed)
    out = tmp_path / "two.json"
    code, stdout, stderr, _ = torchrun(
        "evaluate", *common, "--cache_dir", str(tmp_path / "c2"), "--output", str(out)
    )
    assert code == 0, stderr
    two = json.loads(out.read_text())
    assert two["users"] == USERS and two["item_table"] == "encoded"
    assert two["metrics"] == pytest.approx(one.metrics, abs=1e-6)
    (one_path,), (two_path,) = (
        (tmp_path / "c1").glob("item_table-*.pt"),
        (tmp_path / "c2").glob("item_table-*.pt"),
    )
    assert one_path.name == two_path.name
    torch.testing.assert_close(torch.load(two_path), torch.load(one_path), rtol=0, atol=1e-6)
    assert stdout.count("Tiny test") == 1


def test_resume_after_a_kill_under_two_processes_equals_the_uninterrupted_run(
    assets, two_processes, tmp_path
):
    uninterrupted, metrics, _, _ = two_processes
    argv = flags(assets, tmp_path)
    code, _, stderr, _ = torchrun("finetune", *argv, env={"RECFORMER_TEST_KILL_AT": "1,2"})
    assert code != 0, stderr
    partial = json.loads((tmp_path / "Tiny" / "metrics.json").read_text())
    assert len(partial["dev"]) == 2 and partial["test"] is None  # killed in epoch 2, after 2 dev evaluations
    code, _, stderr, _ = torchrun("finetune", *argv, "--resume")
    assert code == 0, stderr
    assert json.loads((tmp_path / "Tiny" / "metrics.json").read_text()) == metrics
    assert untimed(step_log(tmp_path / "Tiny")) == untimed(
        step_log(uninterrupted)
    )  # no step twice, none missing


def test_resume_on_another_number_of_processes_needs_global_batch_size(assets, one_process, tmp_path):
    folder, _ = one_process
    shutil.copytree(folder, tmp_path / "Tiny")
    argv = flags(assets, tmp_path, "--resume", "--gradient_accumulation_steps", "2")
    i = argv.index("--global_batch_size")
    del argv[i : i + 2]
    before = (tmp_path / "Tiny" / "metrics.json").read_bytes()
    code, _, stderr, _ = torchrun("finetune", *argv)
    assert code != 0
    assert error_lines(stderr) == [
        f"error: {tmp_path / 'Tiny' / 'training_state.pt'} was saved by a run on 1 processes and this run has 2; "
        "pass --global_batch_size 16 to continue it with the same global batch; to start fresh, run without --resume"
    ], stderr
    assert (tmp_path / "Tiny" / "metrics.json").read_bytes() == before


def test_more_processes_than_users_is_refused_in_one_line(assets, tmp_path):
    data = make_dataset(tmp_path, name="One", users=1)
    code, _, stderr, _ = torchrun("finetune", *flags(assets, tmp_path / "out", data=data))
    assert code != 0
    assert error_lines(stderr) == [
        f"error: world size 2 is larger than the number of users (1) in {data / 'train.json'}; run at most 1 processes"
    ], stderr


def test_a_failure_on_one_rank_stops_every_rank_with_its_message(assets, tmp_path):
    code, _, stderr, seconds = torchrun("finetune", *flags(assets, tmp_path), env={"RECFORMER_TEST_FAIL_RANK": "1"},
                                        timeout=120)  # fmt: skip
    assert code != 0
    assert "error: rank 1: injected failure" in error_lines(stderr), stderr
    assert seconds < 60  # not a hang


def finetune_sh(tmp_path, *argv: str, gpus: int = 0, env: dict[str, str] | None = None):
    """finetune.sh with a stand-in `python` that reports `gpus` visible GPUs and prints the command it gets."""
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(
        '#!/usr/bin/env bash\nif [ "$1" = -c ]; then echo "$FAKE_GPUS"; else echo "python $*"; fi\n'
    )
    stub.chmod(0o755)
    full_env = {
        **os.environ,
        "PATH": f"{stub.parent}:{os.environ['PATH']}",
        "FAKE_GPUS": str(gpus),
        "PYTHON": str(stub),  # not the .venv that `make test` leaves beside the script
        **(env or {}),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "finetune.sh"), *argv], capture_output=True, text=True, env=full_env
    )
    return done.returncode, done.stdout.strip(), done.stderr.strip()


TORCHRUN = "python -m torch.distributed.run --standalone --nproc_per_node"
REFERENCE = (f"{ROOT}/finetune.py --pretrain_ckpt c.bin --data_path d --num_train_epochs 128 --batch_size 16 "
             "--gradient_accumulation_steps 8 --global_batch_size 128")  # fmt: skip


@pytest.mark.parametrize(
    "argv, gpus, env, command",
    [
        (
            ["d", "c.bin", "cuda:0"],
            4,
            {},
            f"python {REFERENCE} --device cuda:0 --fp16 --finetune_negative_sample_size -1",
        ),
        (
            ["d", "c.bin"],
            4,
            {},
            f"{TORCHRUN} 4 {REFERENCE} --device auto --fp16 --finetune_negative_sample_size -1",
        ),
        (
            ["d", "c.bin", "cuda", "2", "--seed", "3"],
            8,
            {},
            f"{TORCHRUN} 2 {REFERENCE} --device cuda --fp16 --finetune_negative_sample_size -1 --seed 3",
        ),
        (
            ["d", "c.bin", "auto"],
            8,
            {"NUM_GPUS": "1"},
            f"python {REFERENCE} --device auto --fp16 --finetune_negative_sample_size -1",
        ),
        (
            ["d", "c.bin", "cpu", "--seed", "3"],
            2,
            {},
            f"python {REFERENCE} --device cpu --finetune_negative_sample_size -1 --seed 3",
        ),
        (
            ["d", "c.bin", "auto"],
            0,
            {},
            f"python {REFERENCE} --device auto --fp16 --finetune_negative_sample_size -1",
        ),
    ],
)
def test_finetune_sh_starts_torchrun_for_more_than_one_gpu(tmp_path, argv, gpus, env, command):
    code, stdout, stderr = finetune_sh(tmp_path, *argv, gpus=gpus, env=env)
    assert code == 0, stderr
    assert stdout == command


def test_finetune_sh_refuses_a_gpu_count_that_is_not_a_number(tmp_path):
    code, stdout, stderr = finetune_sh(tmp_path, "d", "c.bin", "auto", env={"NUM_GPUS": "two"})
    assert (code, stdout, stderr) == (2, "", "finetune.sh: NUM_GPUS must be a positive number, got 'two'")


def test_distributed_encoding_benchmark_runs_on_a_small_catalogue():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_distributed_encode.py"), "--items", "300", "--threads", "2",
         "--device", "cpu", "--no_share_baseline"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("sharded item encoding: 300 items, tiny model, batch 128, cpu")
    assert re.fullmatch(r"  1 process  x 2 threads: +[\d.]+ s +\d+ items/s", lines[1])
    assert re.fullmatch(r"  2 processes x 1 threads: +[\d.]+ s +\d+ items/s", lines[2])
    speed_up, efficiency, diff = re.fullmatch(
        r"  speed-up ([\d.]+)x, scaling efficiency (\d+)%, max \|table difference\| ([\d.e+-]+)", lines[3]
    ).groups()
    assert float(speed_up) > 0 and int(efficiency) > 0
    assert float(diff) < 1e-5  # the same table (thread counts differ, so not bit for bit)
