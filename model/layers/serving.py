"""Serving layer: GPUs split between prefill and decode, loads and queueing delay.

Variables (per pool, loads in GPU-equivalents: tokens per period divided by
the per-GPU throughput times the period)
---------
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

    def declare(self, builder: Builder, data: EconomyData, instance: Instance) -> None:
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
        delayed = [i for i, p in enumerate(pools) if p.delay is not None]
        if not delayed:
            return
        rows = np.array(delayed * 2)
        phase = np.repeat([0, 1], len(delayed))
        gpus = cp.hstack([builder.variables["gpus_prefill"][rows[phase == 0]],
                          builder.variables["gpus_decode"][rows[phase == 1]]])
        load = cp.hstack([builder.variables["load_prefill"][rows[phase == 0]],
                          builder.variables["load_decode"][rows[phase == 1]]])
        waiting = builder.variable("waiting", len(rows))
        spare = gpus - load
        # Rotated cone: load**2 <= waiting * spare, so waiting >= load**2 / (gpus - load).
        builder.constrain("serving.delay", [
            cp.SOC(waiting + spare, cp.vstack([2 * load, waiting - spare]), axis=0)])

        throughput = np.where(phase == 0, prefill[rows], decode[rows])
        scale = np.array([pools[i].delay.scale for i in rows])
        value_of_time = np.array([pools[i].delay.value_of_time for i in rows])
        # Waiting per token is scale * load / (gpus - load) seconds, and each
        # token's wait delays its request, so request-seconds per period are
        # tokens per period times that.
        builder.contribute(welfare("waiting"), self.name, "waiting",
                           -value_of_time * scale * throughput)
        self.delay_rows = (rows, phase)
