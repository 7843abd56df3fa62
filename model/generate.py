"""Synthetic instances of any size, for benchmarks and experiments.

The generator draws task classes with log-normal volumes, values and
contexts, model tiers with rising quality and price, and two serving pools.
Every task uses the saturating Cobb-Douglas curve over four token uses, so
the instance exercises the exponential and power cones of the joint program.
"""

from __future__ import annotations

import numpy as np

USES = ("read", "plan", "edit", "verify")


def generate_instance(tasks: int, models: int = 5, seed: int = 0) -> dict:
    """Return a valid instance as plain data (dump it with ``yaml.safe_dump``).

    Parameters
    ----------
    tasks:
        Number of task classes.
    models:
        Number of model tiers, from cheapest to strongest.
    seed:
        Seed of the random generator; the same seed gives the same instance.
    """
    if tasks < 1 or models < 1:
        raise ValueError(f"tasks and models must be at least 1, got tasks={tasks}, models={models}")
    rng = np.random.default_rng(seed)
    tier = np.linspace(0.0, 1.0, models)
    model_names = [f"model-{m}" for m in range(models)]
    pools = {"pool-a": 0, "pool-b": 1}

    task_data = {}
    volume = np.round(rng.lognormal(np.log(50), 0.8, tasks), 1) + 1.0
    value = np.round(rng.lognormal(np.log(10), 0.9, tasks), 2) + 0.5
    context = np.round(rng.lognormal(np.log(8000), 0.6, tasks))
    loss = np.round(value * rng.uniform(0.5, 5.0, tasks), 2)
    for x in range(tasks):
        task_data[f"task-{x}"] = {
            "volume": float(volume[x]), "value": float(value[x]),
            "context_tokens": float(context[x]), "loss": float(loss[x]),
            "latency_sla": float(np.round(rng.uniform(60, 600))),
            "group": f"group-{x % 4}",
        }

    model_data = {}
    for m, name in enumerate(model_names):
        quality = {}
        # Only groups that some task belongs to: a curve for an empty group is invalid.
        for g in range(min(4, tasks)):
            difficulty = 0.2 * g
            quality[f"group-{g}"] = {
                "curve": "cobb_douglas",
                "max_success": float(np.clip(0.5 + 0.45 * tier[m] - 0.1 * difficulty, 0.05, 0.99)),
                "rate": float(1.5 + 1.5 * tier[m]),
                "weights": {"read": 0.35, "plan": 0.15, "edit": 0.3, "verify": 0.2},
                "scales": {"read": 20000.0 * (1 + difficulty), "plan": 2000.0, "edit": 3000.0,
                           "verify": 5000.0},
                "wrong_action": float(np.round(0.08 - 0.06 * tier[m], 4)),
            }
        model_data[name] = {
            "prices": {"input": float(np.round(0.2 + 4.8 * tier[m] ** 2, 3)),
                       "output": float(np.round(0.8 + 19.2 * tier[m] ** 2, 3))},
            "pool": list(pools)[m % 2],
            "output_tokens_per_second": float(np.round(150 - 100 * tier[m])),
            "quality": quality,
        }

    # Size each pool so that it alone could carry the whole load: prefill of the
    # context plus about 25,000 read and verify tokens, and decode of about
    # 6,000 tokens per request. Two pools then run near half utilisation, away
    # from the steep end of the queueing curve.
    prefill_gpus = float(np.sum(volume * (context + 25000))) / 3600 / 10000
    decode_gpus = float(np.sum(volume * 6000)) / 3600 / 1500
    gpus = max(2.0, float(np.ceil(prefill_gpus + decode_gpus)))
    return {
        "schema_version": 1,
        "name": f"synthetic-{tasks}x{models}-seed{seed}",
        "description": "Synthetic instance from tokenomy.model.generate",
        "period_seconds": 3600,
        "defer": {"enabled": True, "success": 0.9, "cost": 25.0, "latency": 0.0},
        "tasks": task_data,
        "uses": {
            "read": {"input_share": 0.95},
            "plan": {"input_share": 0.1},
            "edit": {"input_share": 0.05, "action": "irreversible"},
            "verify": {"input_share": 0.7, "risk_scale": 8000.0},
        },
        "models": model_data,
        "pools": {
            name: {"gpus": float(gpus), "prefill_tokens_per_gpu_second": 10000.0,
                   "decode_tokens_per_gpu_second": 1500.0,
                   "delay": {"scale": 0.02, "value_of_time": 0.001}}
            for name in pools
        },
        "markets": {
            "compute": {"kind": "compute",
                        "budget": float(np.round(0.5 * np.sum(volume) * 0.3, 2))},
            "risk": {"kind": "risk", "price": 1.0},
        },
    }
