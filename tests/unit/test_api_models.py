"""Request bodies refuse text that neither store keeps, as a 400 rather than a store failure."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nexus.api.errors import validation_errors
from nexus.api.models import KeyCreateRequest, RegisterRequest, TenantCreateRequest


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_free_text_that_no_store_keeps_is_refused(bad: str) -> None:
    bodies = [
        (TenantCreateRequest, {"displayName": bad}),
        (KeyCreateRequest, {"label": bad}),
        (RegisterRequest, {"email": "a@example.com", "password": "p" * 12, "displayName": bad}),
    ]
    for model, body in bodies:
        with pytest.raises(ValidationError) as err:
            model.model_validate(body)
        (message,) = validation_errors(err.value)
        assert message.startswith(("displayName ", "label ")), message
        assert bad not in message  # the input is not echoed


def test_ordinary_text_passes() -> None:
    odd = "Acme \u00e9 \U0001f600 \t \u200b"
    assert TenantCreateRequest.model_validate({"displayName": odd}).displayName == odd
    assert KeyCreateRequest.model_validate({}).label == ""
