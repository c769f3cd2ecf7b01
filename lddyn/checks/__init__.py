"""Theory checks: pure functions returning tables with a verdict column (see docs/analysis.md).

``prop3``: baseline-image invariance (Proposition 3); ``prior``: softmax(b) and the class prior
(Theorem 1). They build models from ``lddyn.models`` and never train or read ``lddyn.train``.
"""
