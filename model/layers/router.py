"""Router layer: which model serves each task class, or defer to a human.

Variables
---------
``route[k]``
    Share of task ``x(k)``'s requests sent to model ``m(k)`` (0..1).
``defer[x]``
    Share of task ``x``'s requests sent back to a human.

The router pays for the prompt context of each routed request and owns the
value of options whose success does not depend on the agent's tokens
(``constant`` curves) and of deferral.
"""

from __future__ import annotations

import numpy as np

from ..data import EconomyData
from ..formulation import Builder
from ..schema import Instance
from .base import token_flow, usage, welfare


class Router:
    name = "router"
    decisions = ("route", "defer")

    def declare(self, builder: Builder, data: EconomyData, instance: Instance) -> None:
        tasks, models = data.option_task, data.option_model
        volume = data.volume[tasks]
        task_count, pool_count = len(data.tasks), len(data.pools)

        builder.variable("route", data.option_count)
        defer = builder.variable("defer", task_count)
        builder.constrain("defer.enabled", [defer <= builder.constant(
            "defer.enabled", data.defer_enabled)])

        # Each request is routed somewhere: its dual is the class's marginal surplus.
        builder.contribute(usage("routing"), self.name, "route", 1.0, tasks,
                           size=task_count, unit="share")
        builder.contribute(usage("routing"), self.name, "defer", 1.0, np.arange(task_count),
                           size=task_count, unit="share")

        constant = data.family == "constant"
        builder.contribute(welfare("value"), self.name, "route",
                           np.where(constant, volume * data.value[tasks] * data.max_success, 0.0))
        defer_surplus = data.volume * (data.value * data.defer_success - data.defer_cost)
        builder.contribute(welfare("defer"), self.name, "defer", defer_surplus)

        # Prompt context: billed as input tokens, prefilled, held in KV during decode.
        context = data.context[tasks]
        spend = volume * context * data.price_input[models]
        builder.contribute(welfare("compute"), self.name, "route", -spend)
        builder.contribute(usage("compute"), self.name, "route", spend, unit="USD", tasks=tasks)
        builder.contribute(token_flow("input"), self.name, "route", volume * context, models,
                           size=len(data.models), unit="tokens", tasks=tasks)
        latency = context * data.seconds_per_input[models]
        builder.contribute(usage("latency"), self.name, "route", latency, tasks,
                           size=task_count, unit="s")
        builder.contribute(usage("latency"), self.name, "defer", data.defer_latency,
                           np.arange(task_count), size=task_count, unit="s")
        pool = data.model_pool[models]
        if pool_count:
            builder.contribute(usage("prefill"), self.name, "route", volume * context, pool,
                               size=pool_count, unit="tokens")
