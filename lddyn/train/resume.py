"""What ``--resume`` accepts besides the run itself: ``--set train.steps=N`` to extend it, nothing else.

A resumed run must stay the run its config describes. Growing ``train.steps`` keeps that promise
when nothing the run did so far depended on the total: then the extended run is, step for step, the
run a longer ``train.steps`` would have trained. Things that read the total, and are checked here:

- ``optim.schedule=cosine``: the learning rate of every step after the first depends on the total,
  so a cosine run cannot be extended (a constant schedule can);
- a method's phases (``phase(step)``, e.g. BMB's warm-up share, alternate sampling's phase plan):
  extending is refused unless every step taken so far keeps its phase under the new total;
- DyTrim's annealing (every sample used past ``delta`` of the schedule): refused once the run has
  annealed under the old total.

What extending does not keep is the tables' cadence at the old end step: that step already holds
the evaluation, probe and checkpoint every run writes at its last step. Any other changed key is
refused by name (start a new run for other settings), except ``data.root``: the same files may lie
elsewhere on the machine that resumes the run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lddyn.config import ConfigError, RunConfig, apply_override, build_config
from lddyn.methods import build_methods
from lddyn.overrides import differences

if TYPE_CHECKING:
    from lddyn.train.trainer import Trainer

EXTENDABLE = "train.steps"
WHERE_NOT_WHAT = ("data.root",)  # where the data files are on this machine, not what they hold


class ResumeError(ValueError):
    """An override that a resume cannot apply; the message names the key."""


@dataclass(frozen=True)
class ResumeRequest:
    cfg: RunConfig  # the run's config with the overrides applied
    old_steps: int  # train.steps before the overrides

    @property
    def extends(self) -> bool:
        return self.cfg.train.steps > self.old_steps


def resume_request(stored: dict[str, Any], overrides: list[str]) -> ResumeRequest:
    """The run's config (from run.json) with ``overrides``; raises ResumeError for any key but train.steps."""
    old = build_config(stored)
    raw = copy.deepcopy(stored)
    for assignment in overrides:
        apply_override(raw, assignment)
    cfg = build_config(raw)
    changed = differences(old.to_dict(), cfg.to_dict())
    for key, (was, now) in changed.items():
        if key != EXTENDABLE and key not in WHERE_NOT_WHAT:
            raise ResumeError(
                f"--set {key}={now} cannot be applied on resume (the run has {key}={was}): only "
                f"{EXTENDABLE} may grow, to extend the run; start a new run for other settings"
            )
    if cfg.train.steps < old.train.steps:
        raise ConfigError(EXTENDABLE, cfg.train.steps, f">= the run's {old.train.steps} steps on resume")
    return ResumeRequest(cfg, old.train.steps)


def check_extension(trainer: Trainer, request: ResumeRequest, ckpt: dict[str, Any] | None) -> None:
    """Raise ResumeError if the steps taken so far depended on the old total (see the module doc)."""
    done, old, new = trainer.state.step, request.old_steps, request.cfg.train.steps
    if not request.extends or done == 0:
        return
    refuse = f"--set {EXTENDABLE}={new} cannot extend this run (at step {done} of {old}):"
    fresh = f"start a new run with {EXTENDABLE}={new} instead"
    if trainer.cfg.optim.schedule == "cosine" and done > 1:
        raise ResumeError(
            f"{refuse} optim.schedule=cosine decays the learning rate over {EXTENDABLE}, so its steps "
            f"followed the {old}-step schedule; {fresh}"
        )
    planned = build_methods(trainer.cfg.methods, replace(trainer.info, total_steps=old))
    for before, method in zip(planned, trainer.methods, strict=True):
        before.load_state_dict((ckpt or {}).get("methods", {}).get(before.name, {}))
        moved = next((s for s in range(1, done + 1) if before.phase(s) != method.phase(s)), None)
        if moved is not None:
            raise ResumeError(
                f"{refuse} {before.name} plans its phases over {EXTENDABLE}: step {moved} was in phase "
                f"{before.phase(moved)!r} and would be in {method.phase(moved)!r}; {fresh}"
            )
        if getattr(before, "annealed", False):
            raise ResumeError(
                f"{refuse} {before.name} has annealed (it uses every sample past a share of {EXTENDABLE}) "
                f"and would prune again; {fresh}"
            )
