"""A curve family: uses that substitute for each other at fixed rates."""

from typing import Literal

import cvxpy as cp
import numpy as np
from pydantic import Field, model_validator

from tokenomy.model.schema import EffortCurve


class SubstitutesCurve(EffortCurve):
    """Perfect substitutes: effort G = sum over uses of weights[a] * tokens_a / scales[a]."""

    curve: Literal["substitutes"]
    weights: dict[str, float] = Field(
        default_factory=dict, description="Weight of each use; 1 for a use left out.")

    @model_validator(mode="after")
    def _weights_name_scaled_uses(self):
        unknown = sorted(set(self.weights) - set(self.scales))
        if unknown:
            raise ValueError(f"weights name uses without a scale: {', '.join(unknown)}")
        return self


def substitutes_effort(builder, label, curves, inputs, effort):
    """Bound each option's effort by the weighted sum of its scaled tokens (linear, so concave)."""
    weights = builder.constant(f"{label}.weights", np.array(
        [[curve.weights.get(use, 1.0) for curve in curves] for use in inputs]))
    total = sum(cp.multiply(weights[i], tokens) for i, tokens in enumerate(inputs.values()))
    return [effort <= total]
