"""Stage 2 of finetuning when its learning rate would be 0 at every step.

With `--stage2_schedule shared` (the original's one schedule, sized for stage 1), a stage 1 that ran all
its epochs leaves stage 2 a learning rate of 0: AdamW then moves no weight, so stage 2's result is known
(the stage-1 best model) and training it only costs time. `is_idle` says when that is the case;
`record_idle` writes what such a run would write, so `metrics.json` and the resume file come out the same.
"""

from __future__ import annotations

from typing import Any

from recformer.train.training_state import TrainingState


def is_idle(args: Any, state: TrainingState, steps_per_epoch: int, scheduler: Any) -> bool:
    """Whether every step stage 2 can still take (from `state`) would run at learning rate 0 under
    `scheduler`. False when stage 2 would evaluate dev while no dev evaluation has been recorded (there is
    nothing to repeat)."""
    remaining = steps_per_epoch * (args.num_train_epochs - state.epoch - 1)
    if remaining <= 0:
        return False
    evaluates = any((epoch + 1) % args.verbose == 0 for epoch in range(state.epoch + 1, args.num_train_epochs))
    if evaluates and state.metrics["best_dev"] is None:
        return False
    now = scheduler.last_epoch
    return all(rate(step) == 0 for rate in scheduler.lr_lambdas for step in range(now, now + remaining))


def record_idle(args: Any, state: TrainingState, steps_per_epoch: int, log: Any) -> None:
    """Advance `state` through stage 2 as training it at learning rate 0 would.

    The model is the stage-1 best and stays it: each of stage 2's dev evaluations would measure the best
    dev metrics again, improve nothing and use up the patience. Those records (stage, epoch, step,
    metrics), the TensorBoard dev scalars (`log`) and the step count are written as that run writes them;
    train_log.jsonl gets no stage-2 steps, since none ran.
    """
    best = state.metrics["best_dev"]
    metrics = {k: v for k, v in (best or {}).items() if k not in ("stage", "epoch", "step")}
    for epoch in range(state.epoch + 1, args.num_train_epochs):
        state.global_step += steps_per_epoch
        state.epoch = epoch
        if (epoch + 1) % args.verbose != 0:
            continue
        state.metrics["dev"].append({"stage": 2, "epoch": epoch, "step": state.global_step, **metrics})
        log.log_dev(metrics, state.global_step)
        state.patience -= 1
        if state.patience <= 0:
            state.epoch = args.num_train_epochs
            break
