"""``--set`` overrides across config variants (``config_tools.apply_overrides``): a field that holds a
union of models told apart by ``type``, as the loss objective and the rollout engine do."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from grpopp.config_tools import ConfigError, apply_overrides, union_members

_STRICT = ConfigDict(extra="forbid", frozen=True)


class Clip(BaseModel):
    model_config = _STRICT
    type: Literal["clip"] = "clip"
    eps: float = 0.2
    dual: float | None = None


class Plain(BaseModel):
    model_config = _STRICT
    type: Literal["plain"] = "plain"
    eps: float = 0.2
    scale: float = 1.0


class Outer(BaseModel):
    model_config = _STRICT
    variant: Annotated[Clip | Plain, Field(discriminator="type")] = Clip()
    steps: int = 1


def test_union_members_maps_each_tag_to_its_model() -> None:
    assert union_members(Outer.model_fields["variant"].annotation) == {"clip": Clip, "plain": Plain}
    assert union_members(Outer.model_fields["steps"].annotation) == {}


def test_a_field_of_the_current_variant_is_set() -> None:
    assert apply_overrides(Outer(), ["variant.eps=0.3"]).variant == Clip(eps=0.3)


def test_switching_the_variant_keeps_shared_fields_and_drops_the_others() -> None:
    start = Outer(variant=Clip(eps=0.5, dual=3.0))
    # eps is a field of both variants (kept at 0.5); dual only of clip (dropped); scale gets its default.
    assert apply_overrides(start, ["variant.type=plain"]).variant == Plain(eps=0.5, scale=1.0)


def test_a_field_of_the_variant_switched_to_may_come_before_the_switch() -> None:
    expected = Plain(eps=0.2, scale=2.0)
    assert apply_overrides(Outer(), ["variant.type=plain", "variant.scale=2"]).variant == expected
    assert apply_overrides(Outer(), ["variant.scale=2", "variant.type=plain"]).variant == expected


def test_a_field_of_another_variant_without_the_switch_is_refused_by_validation() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key 'variant\.scale': the 'clip' variant has no field 'scale' \(plain has it\)"
    ):
        apply_overrides(Outer(), ["variant.scale=2"])


def test_an_unknown_variant_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"variant\.type: unknown 'nope'; choose one of clip, plain"):
        apply_overrides(Outer(), ["variant.type=nope"])


def test_a_field_no_variant_has_lists_their_fields() -> None:
    with pytest.raises(
        ConfigError,
        match=r"no variant of variant \(clip, plain\) has a field 'epz'\. Did you mean variant\.eps\? Their fields: "
        r"type, eps, dual, scale",
    ):
        apply_overrides(Outer(), ["variant.epz=1"])
