"""Learning-rate schedules as pure functions of the step, and fitting a schedule into a time budget.

A schedule has no state beyond the step counter, so resuming needs only the step and the total.
"""

from __future__ import annotations

import math

from resnetkit.train.config import ScheduleConfig


def lr_at(step: int, total: int, base_lr: float, s: ScheduleConfig) -> float:
    """The learning rate for optimizer step `step` (0-based) of a run of `total` steps."""
    if s.name == "onecycle":
        return _onecycle(step, total, base_lr)
    warmup = min(s.warmup_steps, total // 4)  # a short (budgeted) run still gets its decay
    if step < warmup:
        if s.warmup == "constant":  # He et al. 2016 sec. 4.2: 0.01 until training gets going, for ResNet-110
            return s.warmup_lr
        return base_lr * (step + 1) / warmup
    if s.name == "step":
        return base_lr * s.gamma ** sum(step >= m for m in milestone_steps(s.milestones, total))
    # cosine, over the steps after warm-up
    t = (step - warmup) / max(1, total - warmup)
    lo = base_lr * s.final_lr_frac
    return lo + (base_lr - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def milestone_steps(milestones: tuple[float, ...], total: int) -> list[int]:
    """Milestones <= 1 are fractions of the run (0.5, 0.75 = the paper's 32k/48k of 64k); others are steps."""
    return [round(m * total) if m <= 1 else int(m) for m in milestones]


def _onecycle(step: int, total: int, max_lr: float, pct_up: float = 0.3, div: float = 25.0,
              final_div: float = 1e4) -> float:
    """Smith & Topin 2019 one-cycle with cosine phases (as torch.optim.lr_scheduler.OneCycleLR)."""
    up = max(1, round(pct_up * total))
    lo, end = max_lr / div, max_lr / div / final_div
    if step < up:
        return lo + (max_lr - lo) * 0.5 * (1 - math.cos(math.pi * step / up))
    t = min(1.0, (step - up) / max(1, total - up))
    return end + (max_lr - end) * 0.5 * (1 + math.cos(math.pi * t))


def plan_total_steps(budget_s: float, elapsed_s: float, steps_done: int, step_s: float,
                     steps_per_epoch: int, eval_s: float, reserve_s: float = 0.0, final_evals: float = 1.0) -> int:
    """How many steps in all so that training, the per-epoch evaluations and the final save end at budget_s.

    elapsed_s is the wall time already spent (set-up included), step_s the measured time of one step,
    eval_s the time of one evaluation pass (one runs after each epoch and one at the end), reserve_s a
    margin for writing the final files, final_evals what the final evaluation costs in evaluation passes (2 with
    flip-TTA). Always returns at least steps_done + 1.
    """
    # Each further step costs its own time plus its share of the evaluation after every epoch.
    per_step = step_s + eval_s / max(1, steps_per_epoch)
    left = budget_s - elapsed_s - reserve_s - eval_s * final_evals  # the final evaluation always happens
    return max(steps_done + 1, steps_done + int(left / per_step))


class BudgetPlanner:
    """Measures the speed as training goes and keeps the schedule length fitted to the budget.

    Steps before `skip` are not timed (first-step allocation and compilation are slow). From step
    skip + probe on, the plan is remade every `every` steps from the step time over the latest window
    (evaluation time excluded, and counted separately), so a machine that slows down or speeds up is
    followed. The
    plan is frozen once 90% of it is done, so the end of the decay is not moved about. `clock` is
    injectable so tests can drive it with a fake clock.
    """

    def __init__(self, budget_s: float, steps_per_epoch: int, start_time: float, clock, *, skip: int = 3,
                 probe: int = 10, every: int = 25, reserve_s: float = 2.0, eval_guess_steps: float = 10.0,
                 final_evals: float = 1.0):
        self.final_evals = final_evals  # the final evaluation's cost in evaluation passes (flip-TTA: 2)
        self.budget_s, self.steps_per_epoch, self.t0, self.clock = budget_s, steps_per_epoch, start_time, clock
        self.skip, self.probe, self.every, self.reserve_s = skip, probe, every, reserve_s
        # Until an evaluation has been timed, one is guessed to cost this many training steps.
        self.eval_guess_steps = eval_guess_steps
        self.t_skip: float | None = None
        self.window: tuple[float, int] | None = None  # (time, step) where the current timing window began
        self.eval_s_in_window = 0.0
        self.step_s: float | None = None
        self.eval_s: float | None = None

    def after_step(self, steps_done: int, total: int) -> int:
        """Call after each training step; returns the (possibly new) total number of steps."""
        if steps_done == self.skip:
            self.t_skip = self.clock()
            self.window = (self.t_skip, steps_done)
            return total
        timed = steps_done - self.skip
        if self.t_skip is None or timed < self.probe or (timed - self.probe) % self.every:
            return total
        if self.step_s is not None and steps_done >= 0.9 * total:
            return total
        now = self.clock()
        t_win, s_win = self.window
        self.step_s = (now - t_win - self.eval_s_in_window) / (steps_done - s_win)
        self.window, self.eval_s_in_window = (now, steps_done), 0.0
        return self._plan(steps_done)

    def after_eval(self, steps_done: int, total: int, eval_s: float) -> int:
        """Call after each evaluation with its duration; refines the plan with the measured cost."""
        if self.window is not None:
            self.eval_s_in_window += eval_s
        first = self.eval_s is None
        self.eval_s = eval_s
        if first and self.step_s is not None and steps_done < 0.9 * total:
            return self._plan(steps_done)
        return total

    def _plan(self, steps_done: int) -> int:
        eval_s = self.eval_s if self.eval_s is not None else self.step_s * self.eval_guess_steps
        total = plan_total_steps(self.budget_s, self.clock() - self.t0, steps_done, self.step_s,
                                 self.steps_per_epoch, eval_s, self.reserve_s, self.final_evals)
        # A run that would end just past an epoch boundary ends on it: no near-empty last epoch.
        spill = total % self.steps_per_epoch
        if total > self.steps_per_epoch and spill < 0.05 * self.steps_per_epoch and total - spill > steps_done:
            total -= spill
        return total
