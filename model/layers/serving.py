"""Serving layer: GPUs split between prefill and decode, loads and queueing delay.

Variables
---------
Per pool. Loads are in GPU-equivalents: tokens per period divided by the
per-GPU throughput times the period.

``gpus_prefill[p]``, ``gpus_decode[p]``
    GPUs assigned to each phase (continuous in the convex form).
``load_prefill[p]``, ``load_decode[p]``
    Load the pool supplies to the prefill and decode markets.
``waiting[i]``
    Epigraph of ``load**2 / (gpus - load)`` per delayed (pool, phase).

The prefill and decode markets balance the tokens routed to a pool against
the load it supplies. Their duals are therefore the full marginal cost of a
token: capacity scarcity plus the queueing delay it imposes on every other
request (the congestion price, or Pigouvian toll).
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ..data import EconomyData
from ..formulation import Builder
from ..schema import Instance
from .base import usage, welfare


class Serving:
    name = "serving"
    decisions = ("gpus_prefill", "gpus_decode")

    def __init__(self, mode: str = "system"):
        if mode not in ("system", "equilibrium"):
            raise ValueError(f"serving mode must be 'system' or 'equilibrium', got {mode!r}")
        self.mode = mode

    def declare(self, builder: Builder, data: EconomyData, instance: Instance) -> None:
        self.delay_rows = None
        if not data.pools:
            return
        pools = [instance.pools[name] for name in data.pools]
        count = len(pools)
        per_period = data.period
        prefill = np.array([p.prefill_tokens_per_gpu_second for p in pools]) * per_period
        decode = np.array([p.decode_tokens_per_gpu_second for p in pools]) * per_period

        gpus_prefill = builder.variable("gpus_prefill", count)
        gpus_decode = builder.variable("gpus_decode", count)
        load_prefill = builder.variable("load_prefill", count)
        load_decode = builder.variable("load_decode", count)
        builder.constrain("serving.capacity", [load_prefill <= gpus_prefill, load_decode <= gpus_decode])

        index = np.arange(count)
        builder.contribute(usage("prefill"), self.name, "load_prefill", -prefill, index,
                           size=count, unit="tokens")
        builder.contribute(usage("decode"), self.name, "load_decode", -decode, index,
                           size=count, unit="tokens")
        kv = np.array([p.kv_tokens_per_gpu or 0.0 for p in pools])
        limited = np.where(kv > 0, index, -1)
        builder.contribute(usage("kv"), self.name, "gpus_decode", -kv, limited,
                           size=count, unit="tokens")
        for name in ("gpus_prefill", "gpus_decode"):
            builder.contribute(usage("gpu"), self.name, name, 1.0, index, size=count, unit="GPUs")

        self._define_delay(builder, data, pools, prefill, decode)

    def _define_delay(self, builder, data, pools, prefill, decode) -> None:
        """Add the queueing delay of every (pool, phase) with a delay curve.

        Request-seconds of waiting per period are tokens per period times the
        delay per token, each token's wait delaying its request. In GPU
        equivalents (load L, GPUs g, throughput per period theta):

        * mm1: ``theta * d * L**2 / (g - L)``, a rotated second-order cone;
        * polynomial: ``theta * (f * L + s * L**(k+1) / g**k)``, a power cone.

        In ``equilibrium`` mode the objective contains the Beckmann potential
        instead, the integral of the delay per token over the load, so its
        optimum is the flat-pricing (Wardrop) equilibrium in which requests
        weigh only the delay they experience:
        ``theta * d * (g * log(g / (g - L)) - L)`` for mm1 and
        ``theta * (f * L + s * L**(k+1) / ((k+1) * g**k))`` for polynomial.
        """
        delayed = [i for i, p in enumerate(pools) if p.delay is not None]
        if not delayed:
            return
        rows = np.array(delayed * 2)
        phase = np.repeat([0, 1], len(delayed))
        gpus = cp.hstack([builder.variables["gpus_prefill"][rows[phase == 0]],
                          builder.variables["gpus_decode"][rows[phase == 1]]])
        load = cp.hstack([builder.variables["load_prefill"][rows[phase == 0]],
                          builder.variables["load_decode"][rows[phase == 1]]])
        curves = [pools[i].delay for i in rows]
        throughput = np.where(phase == 0, prefill[rows], decode[rows])
        value_of_time = np.array([curve.value_of_time for curve in curves])
        waiting = builder.variable("waiting", len(rows))
        equilibrium = self.mode == "equilibrium"

        waiting_weight = np.zeros(len(rows))
        load_weight = np.zeros(len(rows))
        mm1 = np.array([curve.curve == "mm1" for curve in curves])
        if mm1.any():
            index = np.flatnonzero(mm1)
            scale = np.array([curves[i].scale for i in index])
            spare = gpus[index] - load[index]
            if equilibrium:
                builder.constrain("serving.delay", [cp.rel_entr(gpus[index], spare) <= waiting[index]])
                load_weight[index] -= scale  # the potential is d * (g log(g / (g - L)) - L)
            else:
                # Rotated cone: load**2 <= waiting * spare.
                builder.constrain("serving.delay", [cp.SOC(
                    waiting[index] + spare,
                    cp.vstack([2 * load[index], waiting[index] - spare]), axis=0)])
            waiting_weight[index] = scale
        for power in sorted({curve.power for curve in curves if curve.curve == "polynomial"}):
            index = np.array([i for i, curve in enumerate(curves)
                              if curve.curve == "polynomial" and curve.power == power])
            # waiting**(1/(k+1)) * gpus**(k/(k+1)) >= load, i.e. waiting >= load**(k+1) / gpus**k.
            builder.constrain("serving.delay", [cp.constraints.PowCone3D(
                waiting[index], gpus[index], load[index], 1.0 / (power + 1.0))])
            slope = np.array([curves[i].slope for i in index])
            waiting_weight[index] = slope / (power + 1.0) if equilibrium else slope
            load_weight[index] += np.array([curves[i].free_flow for i in index])

        cost = value_of_time * throughput
        builder.contribute(welfare("waiting"), self.name, "waiting", -cost * waiting_weight)
        for phase_index, name in ((0, "load_prefill"), (1, "load_decode")):
            coefficient = np.zeros(len(pools))
            selected = phase == phase_index
            np.add.at(coefficient, rows[selected], -(cost * load_weight)[selected])
            if np.any(coefficient != 0):
                builder.contribute(welfare("waiting"), self.name, name, coefficient)
        self.delay_rows = (rows, phase)
