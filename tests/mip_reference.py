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
    chain_exponents,
    delay_cut,
    delay_points,
    exp_points,
    link_cut,
    ratio_points,
)
from tokenomy.solvers.joint import read_prices

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


def _chain_cuts(inputs, costs, weights, output, settings):
    """Return the chain cuts of ``output <= G(inputs)``, with one new variable per inner link.

    The inputs are divided by the mix that minimises ``costs . x`` at ``G = 1``,
    as the mixed-integer form does.
    """
    costs = np.where(costs > 0, costs, 1.0)
    mix = weights / costs
    mix = mix / np.exp(weights @ np.log(mix))
    points = ratio_points(settings)
    normalised = [inputs[a] / mix[a] for a in range(len(weights))]
    previous, cuts = normalised[0], []
    gammas = chain_exponents(weights)
    for link, gamma in enumerate(gammas, start=1):
        target = output if link == len(gammas) else cp.Variable()
        on_mean, on_input = link_cut(float(gamma), points)
        cuts.append(target <= on_mean * previous + on_input * normalised[link])
        previous = target
    return cuts


def _effort_cuts(builder, data, agent, settings):
    index = agent.index
    tokens, effort = builder.variables["tokens"], builder.variables.get("effort")
    if effort is None:
        return []
    pair_index = np.full((data.option_count, len(data.uses)), -1)
    pair_index[index.pair_option, index.pair_use] = np.arange(len(index.pair_option))
    k, a = index.pair_option, index.pair_use
    share = data.input_share[a]
    models = data.option_model[k]
    per_token = share * data.price_input[models] + (1 - share) * data.price_output[models]
    cost = data.volume[data.option_task[k]] * data.scale[k, a] * per_token
    cuts = []
    for i, k in enumerate(index.variable_options):
        used = np.flatnonzero(data.in_curve[k])
        if data.family[k] != "cobb_douglas" or len(used) < 2:
            continue
        pairs = pair_index[k, used]
        weights = data.weight[k, used] / data.weight[k, used].sum()
        cuts += _chain_cuts([tokens[j] for j in pairs], cost[pairs], weights, effort[i], settings)
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
    amount, effort = builder.variables["training"], builder.variables["training_effort"]
    return _chain_cuts([amount[i] for i in range(len(inputs))], scales * training.price * 1e-6,
                       weights, effort[0], settings)
