"""A retrieval layer: buys context tokens that raise a request's success probability."""

import cvxpy as cp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tokenomy.model.data import PER_MILLION
from tokenomy.model.errors import FieldProblem
from tokenomy.model.layers.base import token_flow, usage, welfare
from tokenomy.model.registry import layer_settings
from tokenomy.model.validation import quality_curve


class RetrievalTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gain: float = Field(gt=0, le=1, description="Success probability retrieval adds at most.")
    rate: float = Field(gt=0, description="Rate of the gain curve (dimensionless).")
    scale: float = Field(gt=0, description="Retrieved tokens per request per unit of effort.")


class RetrievalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: dict[str, RetrievalTask] = Field(min_length=1, description="Tasks that may retrieve.")
    price: float = Field(0.0, ge=0, description="USD per million retrieved tokens (search fee).")


class Retrieval:
    """Retrieval: buys context tokens that raise a request's success probability."""

    name = "retrieval"
    decisions = ("retrieved",)
    Settings = RetrievalSettings
    view = frozenset({"value", "compute"})

    @staticmethod
    def check(instance, settings):
        """Retrieval names tasks, and cannot lift any model's success above 1."""
        problems = []
        for task, entry in settings.tasks.items():
            path = f"layers.retrieval.tasks.{task}"
            if task not in instance.tasks:
                problems.append(FieldProblem(path, task, "is not a task",
                                             "use one of: " + ", ".join(instance.tasks)))
                continue
            for model_name in instance.models:
                curve = quality_curve(instance, task, model_name)
                ceiling = getattr(curve, "max_success", getattr(curve, "success", 0.0))
                if curve is not None and ceiling + entry.gain > 1:
                    problems.append(FieldProblem(
                        f"{path}.gain", entry.gain,
                        f"lifts {model_name}'s success above 1 (its ceiling is {ceiling})",
                        f"use a gain of at most {1 - ceiling:.4g}"))
        return problems

    def declare(self, builder, data, instance):
        settings = layer_settings(instance, self.name)
        chosen = [x for x, task in enumerate(data.tasks) if task in settings.tasks]
        self.options = options = np.flatnonzero(np.isin(data.option_task, chosen))
        if not len(options):
            return
        tasks, models = data.option_task[options], data.option_model[options]
        entries = [settings.tasks[data.tasks[x]] for x in tasks]
        self.gain = gain = np.array([entry.gain for entry in entries])
        rate = builder.constant("retrieval.rate", [entry.rate for entry in entries])
        self.scale = np.array([entry.scale for entry in entries])

        # retrieved = route * tokens per routed request / scale; missing is the
        # perspective route * exp(-rate * retrieved / route) of the gain not had.
        route = builder.variables["route"]
        retrieved = builder.variable("retrieved", len(options))
        missing = builder.variable("retrieval_missing", len(options))
        builder.constrain("retrieval.success", [
            cp.constraints.ExpCone(-cp.multiply(rate, retrieved), route[options], missing)])

        worth = data.volume[tasks] * data.value[tasks] * gain
        route_worth = np.zeros(data.option_count)
        route_worth[options] = worth
        builder.contribute(welfare("value"), self.name, "route", route_worth)
        builder.contribute(welfare("value"), self.name, "retrieval_missing", -worth)

        tokens = data.volume[tasks] * self.scale  # retrieved tokens per period per unit
        spend = tokens * (data.price_input[models] + settings.price * PER_MILLION)
        builder.contribute(welfare("compute"), self.name, "retrieved", -spend)
        builder.contribute(usage("compute"), self.name, "retrieved", spend, tasks=tasks)
        builder.contribute(token_flow("input"), self.name, "retrieved", tokens, models,
                           size=len(data.models), unit="tokens", tasks=tasks)
        builder.contribute(usage("latency"), self.name, "retrieved",
                           self.scale * data.seconds_per_input[models], tasks,
                           size=len(data.tasks), unit="s")
        if data.pools:
            builder.contribute(usage("prefill"), self.name, "retrieved", tokens,
                               data.model_pool[models], size=len(data.pools), unit="tokens")

    def report_rows(self, economy):
        """Return retrieved tokens per routed request and the success they add, per option."""
        variables = economy.builder.variables
        if "retrieved" not in variables:
            return []
        route = variables["route"].value[self.options]
        retrieved = variables["retrieved"].value
        missing = variables["retrieval_missing"].value
        rows = []
        for j, k in enumerate(self.options):
            if route[j] <= 1e-6:
                continue
            task, model = economy.data.option_label(int(k))
            rows.append({"task": task, "model": model,
                         "tokens_per_request": float(retrieved[j] * self.scale[j] / route[j]),
                         "success_added": float(self.gain[j] * (1 - missing[j] / route[j]))})
        return rows
