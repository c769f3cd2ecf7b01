"""Learning dynamics: ``Recorder`` for any PyTorch training loop (docs/own-loop.md), observation
sets, and ``empirical_ntk`` K(x1, x2) = J1 J2ᵀ. Nothing here trains."""

from lddyn.dynamics.entk import NTKImpl, empirical_ntk, entk_fn, explain_ntk
from lddyn.dynamics.groups import COUPLING_TERM, DECOUPLED, EXACT
from lddyn.dynamics.jacobian import ObservationJacobian
from lddyn.dynamics.observations import ObservationSet, observed_logits
from lddyn.dynamics.recorder import GradientCheckError, Recorder, StepRecord
from lddyn.dynamics.structured import NTKPlan, Route

__all__ = [
    "COUPLING_TERM",
    "DECOUPLED",
    "EXACT",
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
