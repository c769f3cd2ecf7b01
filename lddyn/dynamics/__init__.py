"""Learning dynamics: the recorder of training steps, observation sets, the empirical NTK.

``Recorder`` attaches to any PyTorch training loop (docs/own-loop.md); ``empirical_ntk`` computes
K(x1, x2) = J1 J2ᵀ. Nothing here trains; the recorder leaves the model as it found it.
"""

from lddyn.dynamics.entk import NTKImpl, empirical_ntk, entk_fn, explain_ntk
from lddyn.dynamics.groups import COUPLING_TERM, DECOUPLED, EXACT, GROUP_KEYS
from lddyn.dynamics.jacobian import ObservationJacobian
from lddyn.dynamics.observations import ObservationSet, observed_logits
from lddyn.dynamics.recorder import GradientCheckError, Recorder, StepRecord
from lddyn.dynamics.structured import NTKPlan, Route

__all__ = [
    "COUPLING_TERM",
    "DECOUPLED",
    "EXACT",
    "GROUP_KEYS",
    "GradientCheckError",
    "NTKImpl",
    "NTKPlan",
    "ObservationJacobian",
    "ObservationSet",
    "Recorder",
    "Route",
    "StepRecord",
    "empirical_ntk",
    "entk_fn",
    "explain_ntk",
    "observed_logits",
]
