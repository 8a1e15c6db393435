"""Fuzzing the policy loader (``meshlib.policy.loader``) and the config service's apply
(``ConfigState.apply``): Istio resources close to valid (the real field names, wrong types and
values, keys gone or added) and raw text are either accepted or refused with ConfigError whose
issues name the resource and the field; nothing else is ever raised, and a refused apply leaves
the stored state as it was."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from meshlib.controlplane.state import ConfigState
from meshlib.controlplane.store import SQLiteStore
from meshlib.errors import ConfigError, ConfigIssue
from meshlib.policy.loader import load_text
from meshlib.policy.resources import KINDS
from meshlib.policy.validate import format_path, resource_label

ROOT = Path(__file__).resolve().parents[2]
SEED_FILES = sorted((ROOT / "examples" / "policy").glob("*.yaml")) + sorted(
    (ROOT / "examples" / "order-app" / "policy").glob("*.yaml")
)
TELEMETRY = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 5}]
  accessLogging: [{match: {mode: CLIENT}, disabled: true}]
"""
SEED_TEXTS = [path.read_text() for path in SEED_FILES] + [TELEMETRY]
SEEDS: list[dict[str, Any]] = [doc for text in SEED_TEXTS for doc in yaml.safe_load_all(text) if doc]
Path_ = tuple[str | int, ...]


def test_the_seeds_cover_every_kind_and_load() -> None:
    assert {seed["kind"] for seed in SEEDS} == set(KINDS)
    for text in SEED_TEXTS:
        assert load_text(text)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfigState]:
    store = SQLiteStore(tmp_path_factory.mktemp("fuzz-state") / "meshlib.db")
    config = ConfigState(store)
    for text in SEED_TEXTS[: len(list((ROOT / "examples" / "policy").glob("*.yaml")))]:
        config.apply(list(yaml.safe_load_all(text)))
    assert config.version > 0
    yield config
    store.close()


# --- resources close to valid -------------------------------------------------------------------
_WRONG = st.sampled_from(
    [None, True, False, 0, -1, 101, 2**63, -(2**70), 1.5, math.nan, math.inf, "", " ", "x" * 300,
     "not a host!", "-1s", "1h", "0.5s", "*", "UPPER", "a/b", "10.0.0.0/33", "::1", [], [None],
     ["x"], {}, {"x": 1}, {"": None}, "\x00", "é", "${VAR}"]
)  # fmt: skip
_NAMES = st.sampled_from(
    ["spec", "hosts", "http", "route", "weight", "port", "number", "subset", "unknownField", "mode",
     "action", "rules", "jwtRules", "issuer", "tls"]
)  # fmt: skip


def _paths(data: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, (*prefix, index))


def _get(data: Any, path: Path_) -> Any:
    for part in path:
        data = data[part]
    return data


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[dict[str, Any], list[Path_]]:
    """A seed resource with 1-3 edits: a value replaced by a wrong one, a key deleted, an
    unknown key added, a value wrapped in a list. Returns the resource and the edited paths."""
    doc = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    edited: list[Path_] = []
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        inside = [p for p in paths if p[0] == "spec" and len(p) > 1]
        # Mostly inside the spec, deepest fields first: where the validation rules are.
        if draw(st.integers(0, 4)) > 0 and inside:
            paths = sorted(inside, key=len, reverse=True)
        path = draw(st.sampled_from(paths))
        parent, last = _get(doc, path[:-1]), path[-1]
        edit = draw(st.sampled_from(["replace", "replace", "delete", "add", "wrap"]))
        if edit == "replace":
            parent[last] = copy.deepcopy(draw(_WRONG))  # the samples are shared
        elif edit == "delete":
            del parent[last]
        elif edit == "add" and isinstance(parent, dict):
            name = draw(_NAMES)
            path = (*path[:-1], name)
            parent[name] = copy.deepcopy(draw(_WRONG))
        elif edit == "wrap":
            parent[last] = [parent[last]]
        edited.append(path)
        if not isinstance(doc.get("metadata"), dict) or not isinstance(doc.get("kind"), str):
            break  # the envelope is gone: further paths would not be where they were
    return doc, edited


def _field(path: Path_) -> str:
    """``format_path`` with map keys as text, as YAML and JSON spell ``portLevelMtls: {9090: ..}``
    differently (an int key in YAML, a string in JSON)."""
    return format_path(tuple(str(part) if isinstance(part, int) else part for part in path))


def _related(issue: ConfigIssue, edited: list[Path_]) -> bool:
    """The issue's field is an edited one, inside one, or holds one (a cross-field rule)."""
    issue_path = re.sub(r"\[(\d+)\]", r"['\1']", issue.path)
    for path in edited:
        if any(_field(path[:cut]) == issue_path for cut in range(len(path) + 1)):
            return True
        if issue_path.startswith(_field(path)):
            return True
    return False


def _check_issues(error: ConfigError, doc: Any, edited: list[Path_] | None) -> None:
    assert error.issues, doc
    label = resource_label(doc)
    for issue in error.issues:
        assert isinstance(issue, ConfigIssue), doc
        assert issue.message, doc
        if label is not None and issue.line is None:  # not a YAML-level problem
            assert issue.resource == label, (issue, doc)
    if edited is not None and label is not None and " " in label:
        # Each issue names a field: one edited (or inside or around one), or one the document
        # has (a rule across fields: port-level mTLS once the selector is gone, say).
        fields = {_field(path) for path in _paths(doc)}
        for issue in error.issues:
            assert issue.path, (issue, edited)
            named = re.sub(r"\[(\d+)\]", r"['\1']", issue.path)
            assert _related(issue, edited) or named in fields, (issue, edited)


def _refusal(action: Callable[[], object]) -> ConfigError | None:
    try:
        action()
    except ConfigError as error:
        return error
    return None


def _stored(state: ConfigState) -> tuple[int, list[tuple[Any, Any, int]]]:
    return state.version, [(r.key, copy.deepcopy(r.manifest), r.version) for r in state.resources()]


@given(near_valid())
@example(({**SEEDS[0], "spec": None}, [("spec",)]))
@example(({**SEEDS[0], "metadata": {"name": "UPPER"}}, [("metadata", "name")]))
def test_a_near_valid_resource_is_applied_or_refused_naming_the_field(
    state: ConfigState, case: tuple[dict[str, Any], list[Path_]]
) -> None:
    doc, edited = case
    before = _stored(state)
    dry = _refusal(lambda: state.apply([doc], dry_run=True))
    applied = dry is None
    if dry is not None:
        _check_issues(dry, doc, edited)
    assert _stored(state) == before  # a dry run stores nothing either way
    error = _refusal(lambda: state.apply([doc]))
    assert (error is None) == applied, f"the dry run and the apply disagree: {dry} / {error}"
    if error is not None:
        _check_issues(error, doc, edited)
        assert _stored(state) == before, "a refused apply changed the stored state"
    # The loader, reading the same resource as YAML and as JSON, agrees with the config service.
    texts = [yaml.safe_dump(doc)]
    with contextlib.suppress(ValueError):  # JSON has no NaN or Infinity
        texts.append(json.dumps(doc, allow_nan=False))
    for text in texts:
        error = _refusal(lambda: load_text(text, "<fuzz>"))  # noqa: B023 - called at once
        assert (error is None) == applied, (text, error)
        if error is not None:
            _check_issues(error, doc, edited)


# --- raw text --------------------------------------------------------------------------------------
_YAML_PIECES = st.sampled_from(
    [":", "-", " ", "\n", "\t", "'", '"', "[", "]", "{", "}", "&a", "*a", "!!int ", "!!timestamp ",
     "!!binary ", "!!set ", "<<: ", "? ", "---\n", "%YAML 1.1\n", "\x00", "\ufeff", "#"]
)  # fmt: skip


@st.composite
def edited_yaml(draw: st.DrawFn) -> str:
    """A seed file with a few characters replaced, inserted or deleted (YAML's own punctuation
    and tags among them)."""
    text = draw(st.sampled_from(SEED_TEXTS))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        piece = draw(_YAML_PIECES | st.text(max_size=3))
        if draw(st.booleans()):
            text = text[:at] + piece + text[at:]
        else:
            text = text[:at] + piece + text[at + len(piece) :]
    return text


_RAW = st.text(max_size=400) | st.text(st.sampled_from(":-[]{}&*!|>'\"#?,\n a1"), max_size=400)


@given(edited_yaml() | _RAW)
@example("!!timestamp 2020-13-45")  # was ValueError out of PyYAML's SafeConstructor
@example("a: !!int abc")  # was ValueError
@example("!!bool maybe: 1")  # was KeyError
@example("!!set a: 1")  # was TypeError (an unhashable key); "a: !!map x" was an empty mapping
@example("!!timestamp abc")  # was AttributeError
@example("a: &a [*a]")
@example("a: &a\n  b: *a")
@example("[" * 200)
@example("kind: List\nitems: [1, {kind: VirtualService}]")
def test_any_text_loads_or_is_refused_with_config_error(text: str) -> None:
    error = _refusal(lambda: load_text(text, "<fuzz>"))
    if error is None:
        return
    assert error.issues
    lines = text.count("\n") + 2
    for issue in error.issues:
        assert issue.message, issue
        assert issue.source == "<fuzz>", issue
        assert issue.line is None or 1 <= issue.line <= lines, issue


def test_billion_laughs_is_refused_in_bounded_time() -> None:
    laughs = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
    )
    with pytest.raises(ConfigError, match="nodes"):
        load_text(laughs, "<fuzz>")
