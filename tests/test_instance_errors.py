"""Bad instance files give one named error with file, field path, value and fix."""

import copy

import pytest
import yaml

from tokenomy.model.errors import InstanceError
from tokenomy.model.loader import load_instance, read_document

from conftest import CODING_AGENT, WORKED_EXAMPLE


@pytest.fixture()
def worked():
    return read_document(WORKED_EXAMPLE)


def write(tmp_path, data, name="bad.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def error_for(path):
    with pytest.raises(InstanceError) as caught:
        load_instance(path)
    return caught.value, str(caught.value)


def test_missing_field(tmp_path, worked):
    del worked["tasks"]["request"]["volume"]
    path = write(tmp_path, worked)
    error, message = error_for(path)
    assert str(path) in message
    assert "tasks.request.volume" in message
    assert "(missing)" in message
    assert "Fix: add this field" in message


def test_wrong_type(tmp_path, worked):
    worked["tasks"]["request"]["value"] = "a lot"
    error, message = error_for(write(tmp_path, worked))
    assert "tasks.request.value = 'a lot': must be a number" in message
    assert "Fix: give a number" in message


def test_negative_volume(tmp_path, worked):
    worked["tasks"]["request"]["volume"] = -3
    error, message = error_for(write(tmp_path, worked))
    assert "tasks.request.volume = -3" in message
    assert "must be greater than 0" in message
    assert "Fix: give a number greater than 0" in message


def test_unknown_task_in_quality_table(tmp_path, worked):
    worked["models"]["cheap"]["quality"]["reqest"] = worked["models"]["cheap"]["quality"]["request"]
    error, message = error_for(write(tmp_path, worked))
    assert "models.cheap.quality.reqest = 'reqest'" in message
    assert "use one of: default, request" in message


def test_unknown_pool_of_model(tmp_path, worked):
    worked["models"]["cheap"]["pool"] = "gpu-x"
    error, message = error_for(write(tmp_path, worked))
    assert "models.cheap.pool = 'gpu-x'" in message
    assert "is not a defined pool" in message


def test_unknown_market_kind(tmp_path, worked):
    worked["markets"]["carbon"] = {"kind": "carbon", "budget": 3}
    error, message = error_for(write(tmp_path, worked))
    assert "markets.carbon.kind = 'carbon'" in message
    assert "'compute'" in message
    assert "'resource'" in message


def test_market_with_budget_and_price(tmp_path, worked):
    worked["markets"]["risk"]["budget"] = 1.0
    error, message = error_for(write(tmp_path, worked))
    assert "markets.risk" in message
    assert "exactly one of 'budget'" in message


def test_unknown_curve_type(tmp_path, worked):
    worked["models"]["cheap"]["quality"]["request"]["curve"] = "sigmoid"
    error, message = error_for(write(tmp_path, worked))
    assert "models.cheap.quality.request" in message
    assert "constant, leontief, saturating" in message or "cobb_douglas" in message


def test_curve_field_path_has_no_tag(tmp_path, worked):
    worked["models"]["cheap"]["quality"]["request"]["success"] = 1.7
    error, message = error_for(write(tmp_path, worked))
    assert "models.cheap.quality.request.success = 1.7" in message


def test_unknown_use_in_curve(tmp_path, worked):
    worked["models"]["cheap"]["quality"]["request"]["tokens"] = {"write": 10}
    error, message = error_for(write(tmp_path, worked))
    assert "names the use 'write'" in message
    assert "answer" in message


def test_misspelled_field(tmp_path, worked):
    worked["tasks"]["request"]["valeu"] = 3
    error, message = error_for(write(tmp_path, worked))
    assert "tasks.request.valeu" in message
    assert "not a known field" in message


def test_name_with_dot_rejected(tmp_path, worked):
    worked["tasks"]["a.b"] = worked["tasks"].pop("request")
    error, message = error_for(write(tmp_path, worked))
    assert "no dots or spaces" in message


def test_several_problems_listed_together(tmp_path, worked):
    worked["tasks"]["request"]["volume"] = -1
    worked["tasks"]["request"]["value"] = "x"
    error, message = error_for(write(tmp_path, worked))
    assert len(error.problems) == 2


def test_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("tasks: {a: [1, 2\n", encoding="utf-8")
    error, message = error_for(path)
    assert "is not valid YAML" in message
    assert str(path) in message


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    error, message = error_for(path)
    assert "not valid UTF-8" in message


def test_top_level_not_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    error, message = error_for(path)
    assert "must be a mapping" in message


def test_missing_file(tmp_path):
    error, message = error_for(tmp_path / "nowhere.yaml")
    assert "cannot be read" in message


def test_yaml_object_tags_not_executed(tmp_path):
    path = tmp_path / "tagged.yaml"
    path.write_text("schema_version: !!python/object/apply:os.system ['echo pwned']\n",
                    encoding="utf-8")
    error, message = error_for(path)
    assert "is not valid YAML" in message


def test_json_instance_loads(tmp_path, worked):
    import json

    path = tmp_path / "worked.json"
    path.write_text(json.dumps(worked), encoding="utf-8")
    assert load_instance(path).tasks["request"].value == worked["tasks"]["request"]["value"]


def test_override_unknown_path():
    with pytest.raises(InstanceError, match="'nope' is not an entry of tasks"):
        load_instance(WORKED_EXAMPLE, ["tasks.nope.value=3"])


def test_override_invalid_value_is_validation_error():
    with pytest.raises(InstanceError, match=r"markets\.risk\.price = -1"):
        load_instance(WORKED_EXAMPLE, ["markets.risk.price=-1"])


def test_override_without_equals():
    with pytest.raises(InstanceError, match="PATH=VALUE"):
        load_instance(WORKED_EXAMPLE, ["tasks.request.value"])


def test_override_does_not_change_source():
    data = read_document(CODING_AGENT)
    before = copy.deepcopy(data)
    load_instance(data, ["tasks.triage-issue.value=3"])
    assert data == before


def test_pool_without_gpus_needs_rent(tmp_path):
    data = read_document(CODING_AGENT)
    del data["pools"]["pool-small"]["gpus"]
    error, message = error_for(write(tmp_path, data))
    assert "pools.pool-small.gpus" in message
    assert "market of kind gpu with a price" in message


def test_override_creates_missing_section():
    instance = load_instance(WORKED_EXAMPLE, ["defer.enabled=true", "defer.cost=3"])
    assert instance.defer.enabled
    assert instance.defer.cost == 3


def test_override_misspelled_section_is_reported():
    with pytest.raises(InstanceError, match="defr"):
        load_instance(WORKED_EXAMPLE, ["defr.enabled=true"])


def test_duplicate_yaml_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("schema_version: 1\ntasks: {a: {volume: 1, value: 1}}\ntasks: {}\n", encoding="utf-8")
    error, message = error_for(path)
    assert "found duplicate key 'tasks'" in message
    assert "line 3" in message


def test_duplicate_json_key(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{"schema_version": 1, "tasks": {}, "tasks": {}}', encoding="utf-8")
    error, message = error_for(path)
    assert "duplicate key 'tasks'" in message


def test_alias_bomb_rejected(tmp_path):
    lines = ["a: &l0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    for level in range(1, 8):
        refs = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"b{level}: &l{level} [{refs}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    error, message = error_for(path)
    assert "more than 1,000,000 nodes" in message


def test_alias_cycle_rejected(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text("tasks: &a {t: *a}\n", encoding="utf-8")
    error, message = error_for(path)
    assert "(a cycle)" in message


def test_small_aliases_allowed(tmp_path):
    path = tmp_path / "alias.yaml"
    path.write_text(
        "schema_version: 1\n"
        "tasks: {a: {volume: 1, value: 10}, b: {volume: 2, value: 20}}\n"
        "uses: {answer: {input_share: 0}}\n"
        "models:\n"
        "  m:\n"
        "    prices: {input: 0, output: 1000}\n"
        "    quality:\n"
        "      a: &curve {curve: constant, success: 0.5, tokens: {answer: 100}}\n"
        "      b: *curve\n",
        encoding="utf-8")
    instance = load_instance(path)
    assert instance.models["m"].quality["b"].success == 0.5


def test_deep_nesting_rejected(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    error, message = error_for(path)
    assert "is not valid YAML" in message or "nested too deeply" in message


@pytest.mark.parametrize("section", ["tasks", "models", "uses"])
def test_empty_collection(tmp_path, worked, section):
    worked[section] = {}
    error, message = error_for(write(tmp_path, worked))
    assert f"{section} = {{}}: must not be empty" in message
    assert "add at least one entry" in message


@pytest.mark.parametrize(("text", "expected"), [
    (".nan", "must be a finite number"),
    (".inf", "must be a finite number"),
    ("1.0e+300", "must be at most 1e+15"),
])
def test_non_finite_and_huge_values(tmp_path, worked, text, expected):
    dumped = yaml.safe_dump(worked).replace("value: 15", f"value: {text}")
    path = tmp_path / "values.yaml"
    path.write_text(dumped, encoding="utf-8")
    error, message = error_for(path)
    assert "tasks.request.value" in message
    assert expected in message


def test_file_size_limit(tmp_path, monkeypatch, worked):
    from tokenomy.model import loader

    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 100)
    error, message = error_for(write(tmp_path, worked))
    assert "larger than the limit of 100 bytes" in message


def test_badly_scaled_field_warns(caplog, worked):
    worked["tasks"]["other"] = dict(worked["tasks"]["request"], volume=1e-6)
    worked["tasks"]["request"]["volume"] = 1e4
    worked["defer"] = {"enabled": True}
    with caplog.at_level("WARNING", logger="tokenomy.model.loader"):
        load_instance(worked)
    messages = [record.getMessage() for record in caplog.records]
    assert any("values of tasks.*.volume span 1e-06 (tasks.other.volume) to 1e+04 (tasks.request.volume)"
               in message for message in messages), messages


def test_shipped_instances_do_not_warn(caplog):
    with caplog.at_level("WARNING", logger="tokenomy.model.loader"):
        load_instance(CODING_AGENT)
        load_instance(WORKED_EXAMPLE)
    assert not caplog.records


@pytest.mark.parametrize(("name", "kind"), [("routing", "compute"), ("prefill", "risk"),
                                            ("gpu", "resource"), ("latency", "compute")])
def test_reserved_market_name(worked, tmp_path, name, kind):
    worked["markets"][name] = {"kind": kind, "budget": 1}
    error, message = error_for(write(tmp_path, worked))
    assert f"markets.{name} = '{name}': is the name of a market tokenomy defines itself" in message
    assert "give this market another name" in message


def test_invalid_name_reported_at_collection(worked):
    worked["tasks"]["a b"] = worked["tasks"]["request"]
    with pytest.raises(InstanceError, match=r"tasks = 'a b': contains an invalid name"):
        load_instance(worked)
