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
# # The baseline prior and a comparison of methods
#
# The baseline image $I = k\mathbf{1}$ carries no class evidence; with batch-statistics
# normalisation its logits reduce to the bias path, so $\pi_\theta(I)$ is the class prior the model
# has absorbed. This notebook trains three short runs on the long-tailed digits (FixMatch, logit
# adjustment, CDMAD) with the baseline probe and the dynamics recorder, then compares what each
# method changes in the same first-order step.

# %%
import tempfile
from pathlib import Path

from lddyn.analysis import find_runs
from lddyn.analysis.figures import FIGURES
from lddyn.analysis.prior import kl_table
from lddyn.analysis.results import results_table
from lddyn.config import load_config
from lddyn.sinks.parquet import read_table
from lddyn.train.run import start_run

root = Path(tempfile.mkdtemp())
common = [
    "train.steps=20",
    "train.eval_every=5",
    "train.threads=1",
    "probe.baseline=true",
    "probe.every=5",
    "record.dynamics=true",
    "record.every=10",
    "record.realised=false",
]
runs = {
    "fixmatch": load_config("digits-fixmatch", common),
    "logit_adjust": load_config("digits-fixmatch", [*common, "methods=logit_adjust"]),
    "cdmad": load_config("digits-cdmad", [*common, "methods.cdmad.start_step=5"]),
}
dirs = [start_run(cfg, root / name, progress=False) for name, cfg in runs.items()]

# %% [markdown]
# ## π_θ(I) against the labeled prior
# KL(π(I) ‖ labeled prior) per model source and colour, and of the pseudo-labels drawn between probes.

# %%
baseline = read_table(dirs[0], "baseline")
kl_table(baseline).pivot(index="step", columns="series", values="kl").round(4)

# %%
FIGURES["baseline_prior"]([dirs[0]])

# %% [markdown]
# ## The unified view
# Logit adjustment changes the direction of G in the supervised term, CDMAD the pseudo-targets of
# the consistency term; reweighting and resampling (not run here) change the source-class profile.

# %%
FIGURES["unified"](dirs)

# %%
FIGURES["recall"](dirs)

# %%
results_table(find_runs(dirs)).round(3)
