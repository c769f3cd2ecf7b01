"""Learning dynamics: eNTK implementations, one-step decompositions, the realised-update split.

Pure functions over (model, parameters, buffers, inputs): nothing here trains, writes ``.grad``
or updates buffers. Observation-side quantities use normalisation layers in eval mode.
"""

from lddyn.dynamics.decompose import StepDecomposition, TrackedSamples, decompose_step
from lddyn.dynamics.entk import NTKImpl, empirical_ntk, entk_fn, explain_ntk
from lddyn.dynamics.groups import GROUP_KEYS, GroupGradients, group_gradients
from lddyn.dynamics.realised import RealisedStep, UpdatePrediction, predict_update, realised_step
from lddyn.dynamics.structured import NTKPlan, Route

__all__ = [
    "GROUP_KEYS",
    "GroupGradients",
    "NTKImpl",
    "NTKPlan",
    "RealisedStep",
    "Route",
    "StepDecomposition",
    "TrackedSamples",
    "UpdatePrediction",
    "decompose_step",
    "empirical_ntk",
    "entk_fn",
    "explain_ntk",
    "group_gradients",
    "predict_update",
    "realised_step",
]
