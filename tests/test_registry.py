"""The extension registry: registration errors, entry points, instance sections and hooks."""

import numpy as np
import pytest
from distributions import EXAMPLE, install_distribution, install_example
from pydantic import BaseModel
from typer.testing import CliRunner

from tokenomy.model.economy import Economy
from tokenomy.model.errors import ExtensionError, InstanceError
from tokenomy.model.loader import load_instance, read_document
from tokenomy.model.markets import register_market_kind, scalar_market
from tokenomy.model.registry import BUILTIN_FAILURE_MODES, REGISTRY
from tokenomy.model.schema import EffortCurve
from tokenomy.model.views import resolve_views
from tokenomy.solvers.cli import app
from tokenomy.solvers.failures import FAILURE_MODES, failure_modes
from tokenomy.solvers.joint import solve

from conftest import WORKED_EXAMPLE

ENERGY_INSTANCE = EXAMPLE / "energy_retrieval.yaml"


@pytest.fixture(autouse=True)
def isolated_registry():
    """Undo every registration a test makes."""
    with REGISTRY.isolated():
        yield


@pytest.fixture()
def example(tmp_path, monkeypatch):
    """The example extension, installed as a distribution and loaded from its entry point."""
    install_example(tmp_path / "site", monkeypatch)
    assert "energy" in REGISTRY.load_extensions()
    return REGISTRY


def carbon_market(name, instance, data):
    return scalar_market(name, instance, "usage.carbon." + name, "kg", "kg", "carbon per period")


class Probe:
    """A layer that adds nothing."""

    name = "probe"
    decisions = ()

    def declare(self, builder, data, instance):
        pass


# -- registration -------------------------------------------------------------


def test_duplicate_market_kind_rejected():
    register_market_kind("carbon", carbon_market)
    with pytest.raises(ExtensionError, match=r"'carbon': is already registered by module "):
        register_market_kind("carbon", carbon_market)


def test_duplicate_replaced_on_purpose():
    register_market_kind("carbon", carbon_market)
    register_market_kind("carbon", carbon_market, single=True, replace=True)
    assert REGISTRY.market_kind("carbon").single


def test_builtin_kind_needs_replace():
    with pytest.raises(ExtensionError, match=r"already registered by tokenomy.*replace=True"):
        register_market_kind("compute", carbon_market)


@pytest.mark.parametrize("name", ["prefill", "value", "tokens"])
def test_reserved_kind_name_rejected(name):
    with pytest.raises(ExtensionError, match="is reserved"):
        register_market_kind(name, carbon_market)


def test_invalid_kind_name_rejected():
    with pytest.raises(ExtensionError, match="is not a valid name"):
        register_market_kind("carbon dioxide", carbon_market)


def test_settings_must_be_pydantic_model():
    with pytest.raises(ExtensionError, match="is not a pydantic model class"):
        register_market_kind("carbon", carbon_market, settings=dict)


def test_layer_without_declare_rejected():
    class Broken:
        name = "broken"
        decisions = ()

    with pytest.raises(ExtensionError, match=r"has no method declare"):
        REGISTRY.add_layer(Broken)


def test_layer_decisions_must_be_tuple():
    class Broken(Probe):
        decisions = ["route"]

    with pytest.raises(ExtensionError, match="has no tuple of variable names"):
        REGISTRY.add_layer(Broken)


def test_layer_may_not_take_default_name():
    class Router(Probe):
        name = "router"

    with pytest.raises(ExtensionError, match="is the name of a default layer"):
        REGISTRY.add_layer(Router)


def test_duplicate_layer_rejected():
    REGISTRY.add_layer(Probe)
    with pytest.raises(ExtensionError, match="'probe': is already registered"):
        REGISTRY.add_layer(Probe)


def test_curve_model_must_derive_from_effort_curve():
    class Plain(BaseModel):
        curve: str

    with pytest.raises(ExtensionError, match="is not a subclass of tokenomy.model.schema.EffortCurve"):
        REGISTRY.add_curve_family(Plain, lambda *args: [])


def test_builtin_curve_family_name_taken():
    from typing import Literal

    class Saturating(EffortCurve):
        curve: Literal["saturating"]

    with pytest.raises(ExtensionError, match="'saturating': is already registered by tokenomy"):
        REGISTRY.add_curve_family(Saturating, lambda *args: [])


def test_detector_may_not_take_builtin_mode():
    with pytest.raises(ExtensionError, match="is the name of a built-in failure mode"):
        REGISTRY.add_detector("over-routing", lambda *args: [])


def test_builtin_failure_modes_match_detectors():
    assert FAILURE_MODES == BUILTIN_FAILURE_MODES
    REGISTRY.add_detector("custom", lambda *args: [])
    assert failure_modes() == (*FAILURE_MODES, "custom")


def test_isolated_restores_registrations():
    with REGISTRY.isolated():
        register_market_kind("carbon", carbon_market)
        assert REGISTRY.market_kind("carbon") is not None
    assert REGISTRY.market_kind("carbon") is None


# -- entry points ----------------------------------------------------------------


def test_entry_point_discovered(example):
    assert {"energy_cap"} <= set(REGISTRY.market_kinds())
    assert REGISTRY.layer("retrieval") is not None
    assert REGISTRY.curve_family("substitutes") is not None
    assert "over-retrieval" in REGISTRY.detectors()
    assert REGISTRY.market_kind("energy_cap").source.startswith(
        "entry point energy = tokenomy_energy:register (tokenomy-energy 0.1.0)")


def test_entry_point_loaded_once(example):
    assert REGISTRY.load_extensions() == []


def test_instance_file_finds_entry_point(tmp_path, monkeypatch):
    install_example(tmp_path / "site", monkeypatch)
    instance = load_instance(ENERGY_INSTANCE)  # no explicit load: validation scans entry points
    assert instance.markets["energy"].kind == "energy_cap"
    assert list(instance.layers) == ["retrieval"]


def test_entry_point_import_error(tmp_path, monkeypatch):
    install_distribution(tmp_path, monkeypatch, "broken-import",
                         {"broken": "module_that_does_not_exist_xyz:register"})
    with pytest.raises(ExtensionError) as caught:
        REGISTRY.load_extensions()
    message = str(caught.value)
    assert "invalid extension entry point broken = module_that_does_not_exist_xyz:register" in message
    assert "(broken-import 0.1.0)" in message
    assert "cannot be imported (ModuleNotFoundError" in message
    assert "TOKENOMY_NO_EXTENSIONS=1" in message


def test_entry_point_not_callable(tmp_path, monkeypatch):
    module = f"plugin_{tmp_path.name.replace('-', '_')}"
    install_distribution(tmp_path, monkeypatch, "not-callable", {"plain": f"{module}:register"},
                         {module: "register = 3\n"})
    with pytest.raises(ExtensionError, match="names a int, not a callable"):
        REGISTRY.load_extensions()


def test_failing_register_rolls_back(tmp_path, monkeypatch):
    module = f"plugin_{tmp_path.name.replace('-', '_')}"
    code = ("from tokenomy.model.markets import scalar_market\n"
            "def register(registry):\n"
            "    registry.add_market_kind('half_done', lambda *args: [])\n"
            "    raise RuntimeError('boom')\n")
    install_distribution(tmp_path, monkeypatch, "half-done", {"half": f"{module}:register"},
                         {module: code})
    with pytest.raises(ExtensionError, match="raised RuntimeError while registering: boom"):
        REGISTRY.load_extensions()
    assert REGISTRY.market_kind("half_done") is None


def test_two_packages_registering_one_kind(tmp_path, monkeypatch):
    code = "def register(registry):\n    registry.add_market_kind('twin', lambda *args: [])\n"
    first, second = (f"plugin_{tmp_path.name.replace('-', '_')}_{i}" for i in (1, 2))
    install_distribution(tmp_path / "a", monkeypatch, "first", {"first": f"{first}:register"},
                         {first: code})
    install_distribution(tmp_path / "b", monkeypatch, "second", {"second": f"{second}:register"},
                         {second: code})
    with pytest.raises(ExtensionError) as caught:
        REGISTRY.load_extensions()
    assert "'twin': is already registered by entry point" in str(caught.value)


def test_disable_variable_skips_entry_points(tmp_path, monkeypatch):
    install_example(tmp_path / "site", monkeypatch)
    monkeypatch.setenv("TOKENOMY_NO_EXTENSIONS", "1")
    assert REGISTRY.load_extensions() == []
    assert REGISTRY.market_kind("energy_cap") is None


def test_cli_lists_extensions(example):
    result = CliRunner().invoke(app, ["extensions"])
    assert result.exit_code == 0, result.output
    assert "energy_cap" in result.stdout
    assert "retrieval" in result.stdout


def test_cli_lists_extension_sources(example):
    import json

    result = CliRunner().invoke(app, ["extensions", "--json"])
    rows = {(row["type"], row["name"]): row for row in json.loads(result.stdout)}
    assert set(rows) == {("market kind", "energy_cap"), ("layer", "retrieval"),
                         ("curve family", "substitutes"), ("detector", "over-retrieval")}
    assert "(tokenomy-energy 0.1.0)" in rows["layer", "retrieval"]["source"]


def test_cli_reports_broken_extension(tmp_path, monkeypatch):
    install_distribution(tmp_path, monkeypatch, "broken-import", {"broken": "missing_xyz:register"})
    result = CliRunner().invoke(app, ["extensions"])
    assert result.exit_code == 2
    assert "cannot be imported" in result.output


# -- instance sections -------------------------------------------------------------


def worked_with(**sections):
    data = read_document(WORKED_EXAMPLE)
    data.update(sections)
    return data


def problems_of(data):
    with pytest.raises(InstanceError) as caught:
        load_instance(data)
    return str(caught.value)


def test_unknown_kind_lists_registered_kinds():
    register_market_kind("carbon", carbon_market)
    message = problems_of(worked_with(markets={"co2": {"kind": "carbn", "budget": 1}}))
    assert "markets.co2.kind = 'carbn': is not a registered market kind" in message
    assert "'carbon', 'compute'" in message
    assert "entry-point group tokenomy.extensions" in message


def test_unknown_layer_lists_registered_layers():
    REGISTRY.add_layer(Probe)
    message = problems_of(worked_with(layers={"retreival": {}}))
    assert "layers.retreival = 'retreival': is not a registered layer. Fix: use one of: 'probe'" in message


def test_layer_without_settings_rejects_settings():
    REGISTRY.add_layer(Probe)
    message = problems_of(worked_with(layers={"probe": {"depth": 3}}))
    assert "layers.probe = {'depth': 3}: is not read by the layer probe" in message


def test_layer_settings_errors_name_the_field(example):
    data = read_document(ENERGY_INSTANCE)
    data["layers"]["retrieval"]["tasks"]["research"]["gain"] = 2
    data["layers"]["retrieval"]["colour"] = "red"
    message = problems_of(data)
    assert "layers.retrieval.tasks.research.gain = 2: must be at most 1" in message
    assert "layers.retrieval.colour = 'red': is not a known field" in message


def test_layer_check_runs_after_schema(example):
    data = read_document(ENERGY_INSTANCE)
    data["layers"]["retrieval"]["tasks"]["reserch"] = {"gain": 0.1, "rate": 1, "scale": 100}
    data["layers"]["retrieval"]["tasks"]["research"]["gain"] = 0.2
    message = problems_of(data)
    assert "layers.retrieval.tasks.reserch = 'reserch': is not a task" in message
    assert "layers.retrieval.tasks.research.gain = 0.2: lifts large's success above 1" in message


def test_market_settings_errors_name_the_field(example):
    data = read_document(ENERGY_INSTANCE)
    data["markets"]["energy"]["settings"]["models"]["small"]["output"] = -1
    message = problems_of(data)
    assert "markets.energy.settings.models.small.output = -1: must be at least 0" in message


def test_market_kind_check_runs(example):
    data = read_document(ENERGY_INSTANCE)
    data["markets"]["energy"]["settings"]["models"]["tiny"] = {"input": 0, "output": 0}
    assert "markets.energy.settings.models.tiny = 'tiny': is not a model" in problems_of(data)


def test_builtin_kind_takes_no_settings():
    message = problems_of(worked_with(markets={"risk": {"kind": "risk", "price": 1,
                                                        "settings": {"a": 1}}}))
    assert "markets.risk.settings = {'a': 1}: is not read by markets of kind risk" in message


def test_unknown_curve_family_mentions_extensions():
    data = read_document(WORKED_EXAMPLE)
    data["models"]["cheap"]["quality"]["request"] = {"curve": "sigmoid", "success": 0.5}
    message = problems_of(data)
    assert "has an unknown or missing curve type" in message
    assert "cobb_douglas, constant, leontief, saturating" in message
    assert "entry-point group tokenomy.extensions" in message


def test_views_accept_extension_layer_and_kind(example):
    views = resolve_views({"retrieval": ["value", "energy_cap"]})
    assert views["retrieval"] == frozenset({"value", "energy_cap"})
    data = read_document(ENERGY_INSTANCE)
    data["views"] = {"retreival": ["value"]}
    assert "views.retreival = 'retreival': is not a layer" in problems_of(data)


# -- the joint program ---------------------------------------------------------------


def test_instance_layers_join_the_economy(example):
    economy = Economy(load_instance(ENERGY_INSTANCE))
    assert [layer.name for layer in economy.layers] == ["router", "agent", "serving", "capital",
                                                        "retrieval"]
    graph = economy.graph
    assert graph.edges["retrieval", "energy"]["role"] == "demand"
    assert graph.edges["agent", "energy"]["role"] == "demand"
    assert graph.edges["retrieval", "compute"]["role"] == "demand"


def test_update_reuses_problem_with_extensions(example):
    economy = Economy(load_instance(ENERGY_INSTANCE))
    first = solve(economy)
    assert economy.update(load_instance(ENERGY_INSTANCE, ["markets.energy.budget=11"]))
    second = solve(economy)
    assert second.certified
    assert second.welfare > first.welfare


def test_update_drops_a_disabled_layer(example):
    economy = Economy(load_instance(ENERGY_INSTANCE))
    assert not economy.update(load_instance(ENERGY_INSTANCE, ["layers="]))
    assert [layer.name for layer in economy.layers] == ["router", "agent", "serving", "capital"]
    assert solve(economy).certified


def test_equimarginal_skipped_with_extension(example):
    from tokenomy.solvers.analysis import equimarginal

    economy = Economy(load_instance(ENERGY_INSTANCE))
    result = solve(economy)
    assert result.certified
    assert equimarginal(economy, result) == []


def test_meter_failure_names_the_kind():
    def meter(builder, data, instance, name):
        raise KeyError("tokens")

    register_market_kind("carbon", carbon_market, meter=meter)
    instance = load_instance(worked_with(markets={"co2": {"kind": "carbon", "budget": 1}}))
    with pytest.raises(ExtensionError, match=r"meter of market kind carbon\) = 'KeyError': failed"):
        Economy(instance)


def test_factory_must_return_specs():
    register_market_kind("carbon", lambda name, instance, data: ["not a spec"])
    instance = load_instance(worked_with(markets={"co2": {"kind": "carbon", "budget": 1}}))
    with pytest.raises(ExtensionError, match="returned something other than a list of MarketSpec"):
        Economy(instance)


def test_non_convex_effort_rejected(example):
    import cvxpy as cp
    from tokenomy_energy.substitutes import SubstitutesCurve

    def convex_effort(builder, label, curves, inputs, effort):
        return [effort <= sum(cp.square(tokens) for tokens in inputs.values())]

    REGISTRY.add_curve_family(SubstitutesCurve, convex_effort, replace=True)
    instance = load_instance(ENERGY_INSTANCE, [
        "models.small.quality.default={curve: substitutes, max_success: 0.7, rate: 2, "
        "scales: {think: 1500, read: 3000}}"])
    with pytest.raises(ExtensionError, match="is not a convex \\(DCP\\) constraint"):
        Economy(instance)


def test_effort_of_substitutes_is_homogeneous(example):
    from tokenomy_energy.substitutes import SubstitutesCurve

    from tokenomy.model.layers.agent import evaluate_effort

    curve = SubstitutesCurve(curve="substitutes", max_success=0.7, rate=2.0,
                             scales={"think": 1500, "read": 3000}, weights={"read": 0.5})
    single = evaluate_effort(curve, {"think": 1.0, "read": 2.0})
    assert single == pytest.approx(2.0, rel=1e-6)
    assert evaluate_effort(curve, {"think": 2.0, "read": 4.0}) == pytest.approx(2 * single, rel=1e-6)


def test_detector_output_checked(example):
    from tokenomy.solvers.failures import detect
    from tokenomy.solvers.siloed import compare

    REGISTRY.add_detector("sloppy", lambda *args: ["not a dict"])
    economy = Economy(load_instance(ENERGY_INSTANCE))
    comparison = compare(economy)
    with pytest.raises(ExtensionError, match="returned something other than a list of dicts"):
        detect(economy, comparison)


def test_registered_physical_kind_holds_in_siloed_run(example):
    from tokenomy.solvers.siloed import compare

    REGISTRY.add_market_kind("energy_cap", REGISTRY.market_kind("energy_cap").factory,
                             settings=REGISTRY.market_kind("energy_cap").settings,
                             meter=REGISTRY.market_kind("energy_cap").meter, physical=True,
                             replace=True)
    economy = Economy(load_instance(ENERGY_INSTANCE))
    comparison = compare(economy)
    usage = comparison.siloed_state.usage["energy"]
    assert usage[0] <= 10.0 * (1 + 1e-6)
    assert not [row for row in comparison.overruns if row["market"] == "energy"]


def test_probe_layer_from_python_api():
    """A layer passed to Economy directly still works without registration."""
    instance = load_instance(WORKED_EXAMPLE)
    economy = Economy(instance, layers=[*Economy(instance).layers, Probe()])
    assert solve(economy).certified
    assert np.isfinite(solve(economy).welfare)
