"""Capital layer: prefix caches and RL post-training as investments.

Variables
---------
``cached[j]``
    Share of a cacheable option's prompt context served from the pool's prefix
    cache, per class request (at most ``route * prefix_reuse``).
``cache_size[c]``, ``cache_miss[c]``
    Cache size over its size scale, and ``exp(-size / size_scale)``: a cache
    serves at most ``reusable tokens * (1 - cache_miss)`` per period.
``training[i]``, ``training_effort``, ``training_miss``, ``capability``
    Rollout, verifier and update tokens over their scales, the Cobb-Douglas
    effort, ``exp(-rate * effort)`` and the capability gain share ``1 - miss``.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ..data import PER_MILLION, EconomyData
from ..formulation import Builder, geometric_mean_constraints
from ..schema import Instance
from .base import token_flow, usage, welfare


class Capital:
    name = "capital"
    decisions = ("cached", "cache_size", "training")

    def declare(self, builder: Builder, data: EconomyData, instance: Instance) -> None:
        self.cache_index = self.training_inputs = None
        self.staleness = 1.0
        if instance.capital.cache:
            self._define_cache(builder, data, instance)
        if instance.capital.training is not None:
            self._define_training(builder, data, instance)

    def _define_cache(self, builder, data, instance) -> None:
        caches = [data.pools.index(name) for name in instance.capital.cache]
        settings = list(instance.capital.cache.values())
        tasks, models = data.option_task, data.option_model
        pool = data.model_pool[models]
        reusable = data.volume[tasks] * data.context[tasks] * data.reuse[tasks]
        cacheable = np.flatnonzero(np.isin(pool, caches) & (reusable > 0))
        if not len(cacheable):
            return
        cache_row = np.full(len(data.pools), -1)
        cache_row[caches] = np.arange(len(caches))
        row = cache_row[pool[cacheable]]

        # Reusable prefix tokens per period if every class went to this pool.
        ceiling = np.zeros(len(caches))
        linked = np.unique(np.stack([tasks, pool], axis=1)[np.isin(pool, caches)], axis=0)
        if len(linked):
            task_tokens = data.volume * data.context * data.reuse
            np.add.at(ceiling, cache_row[linked[:, 1]], task_tokens[linked[:, 0]])
        keep = ceiling > 0
        ceiling = np.where(keep, ceiling, 1.0)

        cached = builder.variable("cached", len(cacheable))
        size = builder.variable("cache_size", len(caches))
        miss = builder.variable("cache_miss", len(caches))
        route = builder.variables["route"]
        reuse = builder.constant("cache.reuse", data.reuse[tasks[cacheable]])
        limit = np.array([s.max_size / s.size_scale for s in settings])
        served = np.zeros((len(caches), len(cacheable)))
        served[row, np.arange(len(cacheable))] = reusable[cacheable] / data.reuse[tasks[cacheable]]
        served /= ceiling[:, None]
        builder.constrain("cache.reuse", [cached <= cp.multiply(reuse, route[cacheable])])
        builder.constrain("cache.size", [size <= builder.constant("cache.limit", limit)])
        builder.constrain("cache.hits", [
            builder.constant("cache.served", served) @ cached <= 1 - miss,
            cp.constraints.ExpCone(-size, np.ones(len(caches)), miss),
        ])

        k = cacheable
        context_tokens = data.volume[tasks[k]] * data.context[tasks[k]]
        saving = context_tokens * (data.price_input[models[k]] - data.price_cached[models[k]])
        builder.contribute(welfare("compute"), self.name, "cached", saving)
        builder.contribute(usage("compute"), self.name, "cached", -saving, unit="USD",
                           tasks=tasks[k])
        builder.contribute(token_flow("input"), self.name, "cached", -context_tokens, models[k],
                           size=len(data.models), unit="tokens", tasks=tasks[k])
        builder.contribute(usage("prefill"), self.name, "cached", -context_tokens, pool[k],
                           size=len(data.pools), unit="tokens")
        cost = np.array([s.cost * s.size_scale for s in settings])
        builder.contribute(welfare("cache"), self.name, "cache_size", -cost)

        # A request served from a shared prefix loses cache_quality_loss of its
        # success probability; cached / prefix_reuse is the share of requests hit.
        loss = data.cache_quality_loss[tasks[k]]
        if np.any(loss > 0):
            worth = data.volume[tasks[k]] * data.value[tasks[k]] * loss / data.reuse[tasks[k]]
            builder.contribute(welfare("cache_quality"), self.name, "cached", -worth)
        self.cache_index = (cacheable, caches, np.array([s.size_scale for s in settings]))

    def _define_training(self, builder, data, instance) -> None:
        training = instance.capital.training
        inputs = list(training.weights)
        scales = np.array([training.scales[i] for i in inputs])
        weights = np.array([training.weights[i] for i in inputs])
        weights = weights / weights.sum()

        amount = builder.variable("training", len(inputs))
        effort = builder.variable("training_effort", 1)
        miss = builder.variable("training_miss", 1)
        capability = builder.variable("capability", 1)
        if len(inputs) == 1:
            builder.constrain("training.effort", [effort <= amount])
        else:
            builder.constrain("training.effort", geometric_mean_constraints(
                builder, "training.effort", [amount[i:i + 1] for i in range(len(inputs))],
                weights[:, None], effort))
        rate = builder.constant("training.rate", training.rate)
        builder.constrain("training.gain", [
            cp.constraints.ExpCone(-cp.multiply(rate, effort), np.ones(1), miss),
            capability + miss <= 1,
        ])

        # Capability taught by rollouts generated rollout_lag periods ago has
        # depreciated by (1 - depreciation) ** rollout_lag when it is deployed.
        self.staleness = (1.0 - training.depreciation) ** training.rollout_lag
        builder.contribute(welfare("capability"), self.name, "capability",
                           training.value * training.max_gain * self.staleness)
        spend = scales * training.price * PER_MILLION
        builder.contribute(welfare("compute"), self.name, "training", -spend)
        # Training serves no task, so it counts in no tenant's compute.
        builder.contribute(usage("compute"), self.name, "training", spend, unit="USD",
                           tasks=np.full(len(inputs), -1))
        pool = data.pools.index(training.pool)
        gpus = scales / (training.tokens_per_gpu_second * data.period)
        builder.contribute(usage("gpu"), self.name, "training", gpus, np.full(len(inputs), pool),
                           size=len(data.pools), unit="GPUs")
        self.training_inputs = (inputs, scales)
