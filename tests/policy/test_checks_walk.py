"""``iter_checks`` finds every nested message's checks, whatever type holds it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from meshlib.policy.base import FieldPath, MeshModel, iter_checks


class Leaf(MeshModel):
    name: str
    refused: int = 0

    UNSUPPORTED: ClassVar[Mapping[str, str]] = {"refused": "not enforced"}

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.name == "bad":
            yield ("name",), "bad name"


class Plain(MeshModel):  # no checks of its own, but a leaf inside
    leaf: Leaf | None = None


class Root(MeshModel):
    label: str = ""
    kind: Literal["a", "b"] = "a"
    one: Leaf | None = None
    many: list[Leaf] = Field(default_factory=list)
    fixed: tuple[Leaf, ...] = ()
    named: dict[str, Leaf] = Field(default_factory=dict)
    annotated: Annotated[Leaf | None, Field(description="an annotated field")] = None
    either: Leaf | str | None = None
    loose: Any = None
    wrapped: Plain | None = None


def _found(root: Root) -> list[tuple[FieldPath, str]]:
    return sorted(iter_checks(root, ("spec",)), key=repr)


def test_checks_are_found_in_every_kind_of_field_with_their_paths() -> None:
    bad = Leaf(name="bad")
    root = Root(
        one=bad,
        many=[Leaf(name="ok"), bad],
        fixed=(bad,),
        named={"x": bad},
        annotated=bad,
        either=bad,
        loose=bad,
        wrapped=Plain(leaf=Leaf(name="ok", refused=2)),
    )
    assert _found(root) == sorted(
        [
            (("spec", "one", "name"), "bad name"),
            (("spec", "many", 1, "name"), "bad name"),
            (("spec", "fixed", 0, "name"), "bad name"),
            (("spec", "named", "x", "name"), "bad name"),
            (("spec", "annotated", "name"), "bad name"),
            (("spec", "either", "name"), "bad name"),
            (("spec", "loose", "name"), "bad name"),
            (("spec", "wrapped", "leaf", "refused"), "refused is not supported by meshlib: not enforced"),
        ],
        key=repr,
    )


def test_a_clean_message_has_no_findings_and_strings_are_not_walked() -> None:
    assert _found(Root(label="bad", either="bad", one=Leaf(name="ok"))) == []
