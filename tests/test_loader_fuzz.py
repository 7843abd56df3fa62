"""Property tests: any input either loads or raises InstanceError, never another exception."""

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenomy.model.errors import InstanceError
from tokenomy.model.loader import load_instance, parse_document, read_document

from conftest import CODING_AGENT

BASE = read_document(CODING_AGENT)

garbage = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))


ALL_PATHS = sorted(paths(BASE), key=str)


def loads_or_raises_instance_error(data):
    try:
        load_instance(data)
    except InstanceError as error:
        assert error.problems, "an InstanceError lists at least one problem"
        for problem in error.problems:
            assert problem.path and problem.fix


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(ALL_PATHS), value=garbage)
def test_replaced_field(path, value):
    data = copy.deepcopy(BASE)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    loads_or_raises_instance_error(data)


@settings(max_examples=60, deadline=None)
@given(path=st.sampled_from(ALL_PATHS))
def test_removed_field(path):
    data = copy.deepcopy(BASE)
    node = data
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    loads_or_raises_instance_error(data)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text(text):
    try:
        data = parse_document(text, "<fuzz>")
    except InstanceError:
        return
    loads_or_raises_instance_error(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=80, deadline=None)
@given(sections=st.dictionaries(
    st.sampled_from(["schema_version", "tasks", "models", "uses", "pools", "markets", "capital",
                     "defer", "period_seconds", "extra"]), json_values, max_size=6))
def test_random_sections(sections):
    loads_or_raises_instance_error(sections)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "instance.yaml"
    path.write_bytes(data)
    try:
        load_instance(path)
    except InstanceError:
        pass
