"""An independent LP of the tangent cuts, written on the convex form's CVXPY program.

The convex program's cones are replaced by the same tangent cuts that the
mixed-integer form uses. Its market rows and objective are kept as they
are. Tests compare this LP, solved by Clarabel, with the Pyomo/HiGHS LP.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from tokenomy.model.economy import Economy
from tokenomy.model.layers.agent import Agent
from tokenomy.model.layers.capital import Capital
from tokenomy.model.layers.serving import Serving
from tokenomy.solvers.cuts import (
    CutSettings,
    delay_cut,
    delay_points,
    exp_points,
    geometric_cut,
    geometric_directions,
)
from tokenomy.solvers.joint import read_prices
from tokenomy.solvers.mip_form import _token_cost

CONES = (cp.constraints.ExpCone, cp.constraints.PowCone3D, cp.SOC)


def solve_reference(instance, settings: CutSettings | None = None):
    """Return ``(welfare, {row: price})`` of the cut LP built on the convex program."""
    settings = settings or CutSettings()
    economy = Economy(instance)
    builder, data = economy.builder, economy.data
    constraints = [c for c in builder.constraints if not isinstance(c, CONES)]
    points = exp_points(settings)
    for cone in builder.constraints:
        if isinstance(cone, cp.constraints.ExpCone):
            exponent, base, bound = cone.args
            constraints += [bound >= np.exp(-t) * ((1 + t) * base + exponent) for t in points]
    agent = next(layer for layer in economy.layers if isinstance(layer, Agent))
    constraints += _effort_cuts(builder, data, agent, settings)
    serving = next(layer for layer in economy.layers if isinstance(layer, Serving))
    constraints += _delay_cuts(builder, instance, data, serving, settings)
    capital = next(layer for layer in economy.layers if isinstance(layer, Capital))
    constraints += _training_cuts(builder, instance, capital, settings)

    problem = cp.Problem(economy.problem.objective,
                         constraints + list(economy.market_constraints.values()))
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert problem.status == cp.OPTIMAL, problem.status
    prices = {price.row: price.price for price in read_prices(economy)}
    return float(problem.value) * economy.welfare_scale, prices


def _effort_cuts(builder, data, agent, settings):
    index = agent.index
    tokens, effort = builder.variables["tokens"], builder.variables.get("effort")
    if effort is None:
        return []
    pair_index = np.full((data.option_count, len(data.uses)), -1)
    pair_index[index.pair_option, index.pair_use] = np.arange(len(index.pair_option))
    cost = _token_cost(data)
    cuts = []
    for i, k in enumerate(index.variable_options):
        used = np.flatnonzero(data.in_curve[k])
        if data.family[k] != "cobb_douglas" or len(used) < 2:
            continue
        pairs = pair_index[k, used]
        directions = geometric_directions(data.weight[k, used], cost[pairs], settings)
        for row in geometric_cut(data.weight[k, used], directions):
            cuts.append(effort[i] <= row @ tokens[pairs])
    return cuts


def _delay_cuts(builder, instance, data, serving, settings):
    if serving.delay_rows is None:
        return []
    rows, phase = serving.delay_rows
    waiting = builder.variables["waiting"]
    cuts = []
    for i, (p, ph) in enumerate(zip(rows, phase, strict=True)):
        curve = instance.pools[data.pools[p]].delay
        name = "prefill" if ph == 0 else "decode"
        load, gpus = builder.variables[f"load_{name}"][p], builder.variables[f"gpus_{name}"][p]
        a, b = delay_cut(curve.curve, curve.power, delay_points(curve.curve, settings))
        cuts += [waiting[i] >= a[j] * load + b[j] * gpus for j in range(len(a))]
        if curve.curve == "mm1":
            cuts.append(load <= settings.max_utilization * gpus)
    return cuts


def _training_cuts(builder, instance, capital, settings):
    if capital.training_inputs is None:
        return []
    training = instance.capital.training
    inputs, scales = capital.training_inputs
    if len(inputs) < 2:
        return []
    weights = np.array([training.weights[i] for i in inputs])
    weights = weights / weights.sum()
    directions = geometric_directions(weights, scales * training.price * 1e-6, settings)
    amount, effort = builder.variables["training"], builder.variables["training_effort"]
    return [effort[0] <= row @ amount for row in geometric_cut(weights, directions)]
