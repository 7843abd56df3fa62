"""Import serving measurements: throughput per GPU, KV capacity and a delay scale for a pool.

Two public sources are read:

- the Splitwise simulator's performance table (CSV): per model, hardware and
  tensor-parallel degree, measured ``prompt_time`` (ms to prefill a batch of
  ``batch_size`` prompts of ``prompt_size`` tokens) and ``token_time`` (ms per
  decode step of a batch of ``batch_size`` requests);
- the DistServe profiler (JSON) with fitted latency models in ms,
  prefill = a + b * sum(len) + c * sum(len^2) over the batch's prompts and
  decode = a + b * sum(context) + c * batch (the small-batch coefficients up to
  ``decoding_large_small_bs_threshold``, the large-batch ones above), plus its
  KV capacity table (CSV: model, tp, pp, max_num_tokens).

Derived figures, per configuration:

- prefill tokens per GPU-second = prompt_size * prefill batch / prefill time / GPUs;
- decode tokens per GPU-second = decode batch / step time / GPUs;
- KV tokens per GPU = max_num_tokens / (tp * pp) (DistServe only);
- delay scale = one decode step at the decode batch size (seconds), taken as
  the service time of one token in the pool's M/M/1 delay curve;
- per-request speeds for the model entry: 1 / step time output tokens per
  second, and prompt_size / prefill time prompt tokens per second.

Repeated Splitwise measurements of one setting are combined by their median.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MISSING, DataError
from ._files import file_name, read_json, read_table, significant

logger = logging.getLogger(__name__)

SPLITWISE_COLUMNS = ["model", "hardware", "prompt_size", "batch_size", "prompt_time", "token_time",
                     "tensor_parallel"]
DISTSERVE_KV_COLUMNS = ["model", "tp", "pp", "max_num_tokens"]
MILLISECONDS = 1000.0


@dataclass
class ServingFigures:
    """Serving capacity of one model, hardware and parallelism setting."""

    source: str
    model: str
    hardware: str
    tensor_parallel: int
    prompt_size: int
    prefill_batch_size: int
    decode_batch_size: int
    prefill_seconds: float
    decode_step_seconds: float
    prefill_tokens_per_gpu_second: float
    decode_tokens_per_gpu_second: float
    prefill_tokens_per_second: float
    output_tokens_per_second: float
    delay_scale: float
    kv_tokens_per_gpu: float | None = None
    pipeline_parallel: int = 1
    decode_context: int | None = None
    measurements: int | None = None
    kv_source: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def pool(self, gpus: float | None, value_of_time: float) -> dict:
        """Return a ``pools.<p>`` entry of an instance with these figures."""
        entry: dict[str, Any] = {}
        if gpus is not None:
            entry["gpus"] = gpus
        entry["prefill_tokens_per_gpu_second"] = self.prefill_tokens_per_gpu_second
        entry["decode_tokens_per_gpu_second"] = self.decode_tokens_per_gpu_second
        if self.kv_tokens_per_gpu is not None:
            entry["kv_tokens_per_gpu"] = self.kv_tokens_per_gpu
        entry["delay"] = {"scale": self.delay_scale, "value_of_time": value_of_time}
        return entry


def _figures(source: str, model: str, hardware: str, tp: int, prompt_size: int, prefill_batch: int,
             decode_batch: int, prefill_ms: float, step_ms: float, **extra) -> ServingFigures:
    prefill_s, step_s = prefill_ms / MILLISECONDS, step_ms / MILLISECONDS
    return ServingFigures(
        source=source, model=model, hardware=hardware, tensor_parallel=tp, prompt_size=prompt_size,
        prefill_batch_size=prefill_batch, decode_batch_size=decode_batch,
        prefill_seconds=significant(prefill_s), decode_step_seconds=significant(step_s),
        prefill_tokens_per_gpu_second=significant(prompt_size * prefill_batch / prefill_s / tp),
        decode_tokens_per_gpu_second=significant(decode_batch / step_s / tp),
        prefill_tokens_per_second=significant(prompt_size / prefill_s),
        output_tokens_per_second=significant(1.0 / step_s),
        delay_scale=significant(step_s), **extra,
    )


def _positive_size(source: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(source, name, value, "must be a whole number of at least 1",
                        "give a positive batch or prompt size")
    return int(value)


def kv_tokens_per_gpu(gpu_memory_gb: float, weights_gb: float, tensor_parallel: int,
                      bytes_per_token: float, usable_share: float = 0.9,
                      source: str = "kv_capacity") -> float:
    """Estimate KV-cache tokens per GPU from memory sizes (an estimate, not a measurement).

    Each GPU stores ``weights_gb / tensor_parallel`` of the weights.
    ``usable_share`` of its memory is available to weights and KV cache
    together, and the rest goes to activations and the runtime. 1 GB is 1e9 bytes.
    """
    free = usable_share * gpu_memory_gb - weights_gb / tensor_parallel
    if free <= 0 or bytes_per_token <= 0:
        raise DataError(source, "kv_capacity.gpu_memory_gb", gpu_memory_gb,
                        f"leaves no memory for the KV cache after {weights_gb / tensor_parallel:g} GB "
                        "of weights per GPU", "raise tensor_parallel or gpu_memory_gb")
    return free * 1e9 / bytes_per_token


# --- Splitwise ---------------------------------------------------------------------


def import_splitwise(path: str | Path, prompt_size: int = 2048, prefill_batch_size: int = 1,
                     decode_batch_size: int = 16, model: str | None = None,
                     hardware: str | None = None,
                     tensor_parallel: int | None = None) -> list[ServingFigures]:
    """Return serving figures for every Splitwise configuration that matches the filters.

    Prefill uses the rows with ``prompt_size`` and ``prefill_batch_size``.
    Decode uses every row with ``decode_batch_size``, because the table varies
    the batch only at a 512-token prompt and step time barely depends on it.
    """
    table = read_table(path, SPLITWISE_COLUMNS)
    source = table.source
    if not len(table):
        raise DataError(source, "(rows)", 0, "contains no measurements", "give a non-empty table")
    prompt_size = _positive_size(source, "prompt_size", prompt_size)
    prefill_batch_size = _positive_size(source, "prefill_batch_size", prefill_batch_size)
    decode_batch_size = _positive_size(source, "decode_batch_size", decode_batch_size)

    models, hardwares = table.column("model"), table.column("hardware")
    parallel = table.numbers("tensor_parallel", integer=True, minimum=1)
    prompts = table.numbers("prompt_size", integer=True, minimum=1)
    batches = table.numbers("batch_size", integer=True, minimum=1)
    prompt_ms = table.numbers("prompt_time", minimum=0.0)
    token_ms = table.numbers("token_time", minimum=0.0)

    selected = np.ones(len(table), dtype=bool)
    for name, column, requested in (("model", models, model), ("hardware", hardwares, hardware),
                                 ("tensor_parallel", parallel, tensor_parallel)):
        if requested is None:
            continue
        match = column == (float(requested) if name == "tensor_parallel" else requested)
        if not match.any():
            known = sorted({str(int(v)) if name == "tensor_parallel" else str(v) for v in column})
            raise DataError(source, f"column {name}", requested, "matches no row",
                            "use one of: " + ", ".join(known))
        selected &= match

    results = []
    keys = sorted({(str(m), str(h), int(t)) for m, h, t in zip(models[selected], hardwares[selected],
                                                                 parallel[selected], strict=True)})
    for name, device, tp in keys:
        config = selected & (models == name) & (hardwares == device) & (parallel == tp)
        prefill = config & (prompts == prompt_size) & (batches == prefill_batch_size)
        decode = config & (batches == decode_batch_size)
        if not prefill.any() or not decode.any():
            continue
        results.append(_figures(
            source, name, device, tp, prompt_size, prefill_batch_size, decode_batch_size,
            float(np.median(prompt_ms[prefill])), float(np.median(token_ms[decode])),
            measurements=int(prefill.sum() + decode.sum()),
        ))
    if not results:
        sizes = sorted({int(v) for v in prompts[selected & (batches == prefill_batch_size)]})
        batch_sizes = sorted({int(v) for v in batches[selected]})
        raise DataError(source, "prompt_size, batch_size",
                        f"prompt {prompt_size}, prefill batch {prefill_batch_size}, "
                        f"decode batch {decode_batch_size}", "match no measurement",
                        f"use a prompt size of {sizes} at that prefill batch and a batch size of "
                        f"{batch_sizes}")
    return results


# --- DistServe ---------------------------------------------------------------------


def import_distserve(profile_path: str | Path, kv_path: str | Path | None = None,
                     prompt_size: int = 2048, prefill_batch_size: int = 1,
                     decode_batch_size: int = 16, decode_context: int | None = None,
                     model: str | None = None, tensor_parallel: int | None = None,
                     pipeline_parallel: int = 1, hardware: str = "a100-80gb") -> list[ServingFigures]:
    """Return serving figures for every DistServe profile entry that matches the filters.

    Each decoding request keeps ``decode_context`` tokens of context (default:
    the prompt size). KV tokens per GPU come from ``kv_path`` at
    (model, tp, ``pipeline_parallel``) when the file has that entry. The
    profile does not name its GPU, so ``hardware`` labels the figures.
    """
    source = file_name(profile_path)
    prompt_size = _positive_size(source, "prompt_size", prompt_size)
    prefill_batch_size = _positive_size(source, "prefill_batch_size", prefill_batch_size)
    decode_batch_size = _positive_size(source, "decode_batch_size", decode_batch_size)
    context = prompt_size if decode_context is None else _positive_size(source, "decode_context",
                                                                         decode_context)
    profile = read_json(profile_path)
    if not isinstance(profile, dict) or not profile:
        raise DataError(source, "(top level)", type(profile).__name__,
                        "must map model names to tensor-parallel entries",
                        "give the DistServe profiler JSON")
    if model is not None and model not in profile:
        raise DataError(source, "model", model, "is not in the profile",
                        "use one of: " + ", ".join(sorted(profile)))
    capacity = _kv_capacity(kv_path) if kv_path is not None else {}

    results = []
    for name, entries in profile.items():
        if model is not None and name != model:
            continue
        if not isinstance(entries, dict):
            raise DataError(source, name, entries, "must map tensor-parallel degrees to coefficients",
                            "give {\"1\": {prefill: [a, b, c], ...}}")
        for degree, entry in entries.items():
            where = f"{name}.{degree}"
            tp = _degree(source, where, degree)
            if tensor_parallel is not None and tp != tensor_parallel:
                continue
            a, b, c = _coefficients(source, f"{where}.prefill", entry, "prefill")
            lengths = prompt_size * prefill_batch_size
            prefill_ms = a + b * lengths + c * prefill_batch_size * prompt_size ** 2
            threshold = _threshold(source, where, entry)
            phase = "decoding_smallbs" if decode_batch_size <= threshold else "decoding_largebs"
            a, b, c = _coefficients(source, f"{where}.{phase}", entry, phase)
            step_ms = a + b * decode_batch_size * context + c * decode_batch_size
            if prefill_ms <= 0 or step_ms <= 0:
                raise DataError(source, where, [prefill_ms, step_ms],
                                "gives a non-positive latency at these sizes",
                                "choose larger prompt or batch sizes")
            kv = capacity.get((name, tp, pipeline_parallel))
            if kv_path is not None and kv is None:
                logger.warning("%s: no KV capacity for %s at tp %d, pp %d; the pool gets no KV limit",
                               file_name(kv_path), name, tp, pipeline_parallel)
            results.append(_figures(
                source, name, hardware, tp, prompt_size, prefill_batch_size, decode_batch_size,
                prefill_ms, step_ms, pipeline_parallel=pipeline_parallel, decode_context=context,
                kv_tokens_per_gpu=None if kv is None else significant(kv / (tp * pipeline_parallel)),
                kv_source=file_name(kv_path) if kv is not None else None,
            ))
    if not results:
        raise DataError(source, "tensor_parallel", tensor_parallel, "matches no profile entry",
                        "use a tensor-parallel degree listed under the model")
    return results


def _degree(source: str, where: str, degree: str) -> int:
    try:
        value = int(degree)
    except ValueError:
        value = 0
    if value < 1:
        raise DataError(source, where, degree, "is not a tensor-parallel degree",
                        "key each entry by a positive whole number")
    return value


def _coefficients(source: str, where: str, entry: Any, key: str) -> tuple[float, float, float]:
    values = entry.get(key, MISSING) if isinstance(entry, dict) else MISSING
    if not isinstance(values, list) or len(values) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values):
        raise DataError(source, where, values, "must be a list of three finite numbers [a, b, c]",
                        "give the fitted latency coefficients in milliseconds")
    return float(values[0]), float(values[1]), float(values[2])


def _threshold(source: str, where: str, entry: dict) -> float:
    value = entry.get("decoding_large_small_bs_threshold", MISSING)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(source, f"{where}.decoding_large_small_bs_threshold", value,
                        "must be a number", "give the batch size where the large-batch fit starts")
    return float(value)


def _kv_capacity(path: str | Path) -> dict[tuple[str, int, int], float]:
    table = read_table(path, DISTSERVE_KV_COLUMNS)
    tp = table.numbers("tp", integer=True, minimum=1)
    pp = table.numbers("pp", integer=True, minimum=1)
    tokens = table.numbers("max_num_tokens", minimum=0.0)
    names = table.column("model")
    return {(str(n), int(t), int(p)): float(k) for n, t, p, k in zip(names, tp, pp, tokens, strict=True)}
