"""An energy-cap market: kWh per period drawn by the tokens models process and by GPUs."""

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tokenomy.model.errors import FieldProblem
from tokenomy.model.layers.base import kind_usage, token_flow, usage
from tokenomy.model.markets import scalar_market

KIND = "energy_cap"


class ModelEnergy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, description="kWh per million input tokens the model prefills.")
    output: float = Field(ge=0, description="kWh per million output tokens the model decodes.")


class EnergySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelEnergy] = Field(
        description="Energy per million tokens by model; a model left out draws none.")
    gpu_kw: float = Field(0.0, ge=0, description="Power of one GPU in use (kW).")


def check_energy(instance, name, settings):
    """Each model named in the settings must be a model of the instance."""
    return [FieldProblem(f"markets.{name}.settings.models.{model}", model, "is not a model",
                         "use one of: " + ", ".join(instance.models))
            for model in settings.models if model not in instance.models]


def meter_energy(builder, data, instance, name):
    """Add kWh per period to the market's usage from the token flows and the GPUs in use."""
    settings = instance.markets[name].settings
    quantity = kind_usage(KIND, name)
    for direction in ("input", "output"):
        kwh_per_token = np.array([
            getattr(settings.models[model], direction) if model in settings.models else 0.0
            for model in data.models]) * 1e-6
        builder.derive_weighted(quantity, token_flow(direction), kwh_per_token, unit="kWh")
    if settings.gpu_kw > 0:
        hours = data.period / 3600.0
        builder.derive_weighted(quantity, usage("gpu"), settings.gpu_kw * hours, unit="kWh")


def energy_market(name, instance, data):
    """Return the market's one row: a kWh budget, or a price per kWh."""
    return scalar_market(name, instance, kind_usage(KIND, name), unit="kWh", per="kWh",
                         description="energy drawn by model tokens and GPUs per period")
