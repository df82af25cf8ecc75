"""A torchrun worker for the distributed tests: runs finetune.py or evaluate.py's `main` in this process.

Usage: torchrun ... tests/dist_worker.py {finetune|evaluate} FLAGS...

Faults for the tests, set through the environment:
    RECFORMER_TEST_FAIL_RANK=r     rank r raises ValueError("injected failure") in its first training epoch.
    RECFORMER_TEST_KILL_AT=s,e     rank 0 is killed (SIGKILL) after logging its first step of stage s epoch e.
"""

from __future__ import annotations

import os
import signal
import sys


def inject_faults() -> None:
    from recformer import distributed
    from recformer.train.finetune import Finetuner
    from recformer.train.run_log import RunLog

    if "RECFORMER_TEST_FAIL_RANK" in os.environ:
        failing = int(os.environ["RECFORMER_TEST_FAIL_RANK"])
        train_one_epoch = Finetuner.train_one_epoch

        def failing_epoch(self, stage, epoch):
            if distributed.rank() == failing:
                raise ValueError("injected failure")
            train_one_epoch(self, stage, epoch)

        Finetuner.train_one_epoch = failing_epoch
    if "RECFORMER_TEST_KILL_AT" in os.environ:
        at = tuple(int(x) for x in os.environ["RECFORMER_TEST_KILL_AT"].split(","))
        log_step = RunLog.log_step

        def killed_after(self, record):
            log_step(self, record)
            if (record["stage"], record["epoch"]) == at:
                os.kill(os.getpid(), signal.SIGKILL)

        RunLog.log_step = killed_after


def main() -> int:
    command, argv = sys.argv[1], sys.argv[2:]
    inject_faults()
    if command == "finetune":
        from recformer.cli.finetune import main as run
    else:
        from recformer.cli.evaluate import main as run
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
