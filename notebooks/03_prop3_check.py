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
# # Proposition 3 (and Theorem 1), checked numerically
#
# **Proposition 3.** If every normalisation layer computes its statistics from the input itself along
# axes over which the features of the solid image $I_k = k\mathbf{1}$ are constant, every normalised
# feature of $I_k$ is zero, so the network outputs its bias path $b$ and
# $\pi(I_k) = \mathrm{softmax}(b)$ for every colour $k$.
#
# `lddyn check prop3` measures this on the models of `lddyn.models`. Here: the small (digits-sized)
# cases; the WRN-28-2 cases run from the command line.

# %%
import matplotlib.pyplot as plt
import torch

from lddyn.checks import prior, prop3

small = [c for c in prop3.CASES if c.model != "wrn28_2"]
table = prop3.check_prop3(small)
table.drop(columns="why").round(4)

# %% [markdown]
# Only the cases inside the assumptions are counted: both must be exact. Outside them the verdict
# is reported with its reason:

# %%
for _, row in table.iterrows():
    print(f"{row.case:28s} {row.invariance:12s} {row.why}")
assert not table.contradicts.any()

# %% [markdown]
# ## π(I_k) as a function of k
# Batch statistics with replicate padding: flat and equal to softmax(b). Zero padding: the scale of
# k is normalised away but its sign is not (three plateaus: k < 0, k = 0, k > 0). Running
# statistics: BN is affine in k, so π(I_k) keeps moving.

# %%
ks = torch.linspace(-3, 3, 25).tolist()
names = ["cnn BN-batch repl-pad", "cnn BN-batch", "cnn BN-running"]
fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=True)
for ax, name in zip(axes, names, strict=True):
    case = next(c for c in prop3.CASES if c.name == name)
    model = prop3.make_model(case)
    probs = torch.stack([prop3.solid_logits(model, k, case.image_shape).softmax(-1) for k in ks])
    b = prop3.bias_path_logits(model, case.image_shape).softmax(-1)
    ax.plot(ks, probs[:, :4].numpy())
    ax.set_prop_cycle(None)
    ax.plot([ks[0], ks[-1]], [b[:4].numpy(), b[:4].numpy()], ls=":")
    ax.set(title=name, xlabel="colour k", ylabel="π(I_k), classes 0-3 (dotted: softmax(b))")
fig.tight_layout()

# %% [markdown]
# ## Theorem 1 in a controlled case
# A linear head on Gaussian features whose class means are equidistant from the origin, trained by
# full-batch gradient descent on long-tailed weights: softmax(b) converges to the label distribution.
# Centring by the imbalanced data mean (what BatchNorm does) moves the optimum to the posterior at
# the shifted origin, which is more head-heavy.

# %%
balanced = prior.check_controlled()
centred = prior.check_controlled(prior.Controlled(centring="empirical"))
print("p                 ", balanced.label_prior.round(4))
print("softmax(b), balanced", balanced.softmax_b.round(4), balanced.verdict)
print("softmax(b), BN-like ", centred.softmax_b.round(4), centred.verdict)
balanced.trajectory.iloc[::4]
