# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The Δlog π decomposition of one step, on digits
#
# A step changes the parameters by Δθ and, to first order, the log-probabilities at an
# observation $x_o$ by $T(x_o)\, J_o\, \Delta\theta$, with $T = I - \mathbf{1}\pi^\top$ and
# $J_o = \partial z(x_o)/\partial\theta$.
# Under plain gradient descent $\Delta\theta = -\eta \nabla_\theta L$ and this is the familiar
#
# $$\Delta \log \pi(\cdot \mid x_o) = -\eta\, T(x_o) \sum_b K(x_o, x_b)\, G_b,$$
#
# with $K$ the empirical NTK and $G_b = \partial L / \partial z_b$ read from autograd on the loss actually
# minimised. The recorder (`--record dynamics`) splits the gradient by loss term, source class,
# pseudo-label correctness and pruning status, and writes three views of each group $g$: `kg`
# ($J_o \nabla_\theta L_g$), `gd_logp` (the plain-gradient-descent formula) and `update_logp`, the
# group's share of the update the optimiser really made. The digits default trains with Adam, so
# `update_logp` is the one that describes the run; this notebook reads it first.

# %%
import tempfile
from pathlib import Path

from lddyn.analysis import dynamics
from lddyn.analysis.figures import FIGURES
from lddyn.config import load_config
from lddyn.train.run import start_run

run = Path(tempfile.mkdtemp()) / "dytrim"
cfg = load_config(
    "digits-dytrim",
    [
        "train.steps=24",
        "train.eval_every=8",
        "train.threads=1",
        "probe.baseline=true",
        "probe.every=8",
        "record.every=8",
        "methods.cdmad.start_step=8",
        "methods.dytrim.prior_start_step=8",
    ],
)
start_run(cfg, run, progress=False)
sorted(p.name for p in run.iterdir())

# %% [markdown]
# ## The tables
# `observations` says what each observation id is (test images observed with BatchNorm's running
# statistics, baseline images with their own); `dynamics` holds one value per (step, observation,
# target class, group or update part, quantity).

# %%
frame = dynamics.contributions(run)  # quantity update_logp, joined with the observations
frame.head()

# %% [markdown]
# ## One step: the update's parts against the measured change
# Each group's share of Adam's update, the momentum carry and the post-step decay add up, with the
# BatchNorm drift, to the change measured by forwards before and after the step; what is left, the
# residual, is second order in the step size.

# %%
step = int(frame.step.max())
split = dynamics.step_split(frame, step)
keys = ["observation", "target_class"]
parts = split.set_index(keys).sum(axis=1)
measured, drift = (
    dynamics.quantity_rows(run, q, f"step = {step}").set_index(keys).value for q in ("measured", "bn_drift")
)
gap = (measured - drift - parts.reindex(measured.index)).abs()
change = (measured - drift).abs().mean()
print(f"step {step}: mean |measured - drift| {change:.2e}, mean first-order gap {gap.mean():.2e}")
split[split.observation == 0].round(5)

# %%
FIGURES["step_dynamics"]([run])

# %% [markdown]
# ## Bias accumulation: which source classes push which target classes, summed over steps

# %%
FIGURES["bias_accumulation"]([run])

# %% [markdown]
# ## The optimiser's update against plain gradient descent
# Adam preconditions the gradient, so −η T K G (`gd_logp`) is not the step taken; `update_logp`
# is, and it matches the measured change to first order.

# %%
FIGURES["realised"]([run])

# %%
FIGURES["step_dynamics"]([run], quantity="gd_logp")
