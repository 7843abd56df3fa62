"""A failure-mode detector: the siloed retrieval layer buys more tokens than the optimum."""


def detect_over_retrieval(economy, comparison, prices, thresholds):
    """Report options whose siloed retrieval exceeds the optimum's by more than the shortfall share."""
    layer = economy.layer("retrieval")
    if layer is None or "retrieved" not in comparison.siloed_state.variables:
        return []
    realised = comparison.siloed_state.variables["retrieved"]
    optimum = comparison.global_state.variables["retrieved"]
    route = comparison.siloed_state.variables["route"]
    found = []
    for j, k in enumerate(layer.options):
        if route[k] > 1e-3 and realised[j] > (1 + thresholds.shortfall) * optimum[j] + 1e-6:
            task, model = economy.data.option_label(int(k))
            found.append({"mode": "over-retrieval", "task": task, "model": model,
                          "retrieved_tokens": float(realised[j] * layer.scale[j]),
                          "optimal_retrieved_tokens": float(optimum[j] * layer.scale[j]),
                          "unit": "tokens per request of the task"})
    return found
