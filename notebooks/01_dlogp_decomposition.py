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
# One SGD step changes the log-probabilities at an observation $x_o$ by, to first order,
#
# $$\Delta \log \pi(\cdot \mid x_o) = -\eta\, T(x_o) \sum_b K(x_o, x_b)\, G_b,$$
#
# with $T = I - \mathbf{1}\pi^\top$, $K$ the empirical NTK and $G_b = \partial L / \partial z_b$ read
# from autograd on the loss actually minimised. The recorder (`--record dynamics`) splits the sum by
# loss term, source class, pseudo-label correctness and pruning status, and writes tidy tables. This
# notebook makes a short DyTrim run on the long-tailed digits and reads the tables back.

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
        "record.dynamics=true",
        "record.every=8",
        "methods.cdmad.start_step=8",
        "methods.dytrim.prior_start_step=8",
    ],
)
start_run(cfg, run, progress=False)
sorted(p.name for p in run.iterdir())

# %% [markdown]
# ## The tables
# `observations` says what each observation id is; `dynamics` holds one value per (step,
# observation, target class, group, quantity).

# %%
frame = dynamics.contributions(run)  # quantity pred_logp, joined with the observations
frame.head()

# %% [markdown]
# ## One observation, one step: supervised vs consistency, correct vs wrong pseudo-labels
# The groups sum exactly to the total computed along the full gradient by one JVP.

# %%
step = int(frame.step.max())
split = dynamics.step_split(frame, step)
total = dynamics.select(run, "dynamics", f"quantity = 'pred_logp_total' AND step = {step}")
check = split.set_index(["observation", "target_class"]).sum(axis=1)
gap = (check - total.set_index(["observation", "target_class"]).value.reindex(check.index)).abs().max()
print(f"largest |sum of groups - total| at step {step}: {gap:.2e}")
assert gap < 1e-5
split[split.observation == 0].round(5)

# %%
FIGURES["step_dynamics"]([run])

# %% [markdown]
# ## Bias accumulation: which source classes push which target classes, summed over steps

# %%
FIGURES["bias_accumulation"]([run])

# %% [markdown]
# ## Plain first order vs the optimiser's realised update
# Adam preconditions the gradient, so −η T K G is not the step taken; the `realised` table predicts
# the change from the actual Δθ and compares it with the change measured by forwards.

# %%
FIGURES["realised"]([run])
