"""The text policy (parley/text.py) on its own: model text is cleaned, client text is refused."""

from __future__ import annotations

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from parley.text import (
    StoredText,
    clean,
    clean_json,
    encoded,
    first_surrogate,
    has_surrogate,
    identifier_problem,
)


def test_model_text_gets_the_replacement_character_for_nul_and_lone_surrogates() -> None:
    assert clean("a\x00b") == "a\ufffdb"
    assert clean("x\ud800y\udfffz") == "x\ufffdy\ufffdz"
    assert clean("fine: ü 😀") == "fine: ü 😀"
    assert clean_json({"k\x00": ["\ud800", 1, {"n": None}]}) == {"k\ufffd": ["\ufffd", 1, {"n": None}]}


@pytest.mark.parametrize(
    ("raw", "sent"),
    [("plain", "plain"), ("nul\x00", "nul\ufffd"), ("half \ud83d", "half \ufffd"), ("😀 ok", "😀 ok")],
)
def test_encoded_text_is_the_cleaned_text_and_valid_json(raw: str, sent: str) -> None:
    text, quoted = encoded(raw)
    assert text == sent
    assert orjson.loads(quoted) == sent


def test_surrogates_are_found_where_they_are() -> None:
    assert not has_surrogate("ascii") and not has_surrogate("ü😀")
    assert has_surrogate("\udc00")
    frame = {"user_input": {"prompt": [{"type": "text", "text": "ok"}, {"text": "bad \ud800"}]}}
    assert first_surrogate(frame) == "user_input.prompt[1].text"
    assert first_surrogate({"a": {"\ud800": 1}}) == "a key in a"
    assert first_surrogate({"fine": ["x", 1, None]}) is None


class Stored(BaseModel):
    text: StoredText


@pytest.mark.parametrize(("value", "why"), [("a\x00", "NUL"), ("a\ud800", "lone surrogate")])
def test_client_text_that_cannot_be_stored_is_refused(value: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        Stored(text=value)


def test_identifiers_have_a_length_and_no_control_characters() -> None:
    assert identifier_problem("r-1", 255) is None
    assert "at most 255" in (identifier_problem("x" * 256, 255) or "")
    assert "control" in (identifier_problem("a\nb", 255) or "")
    assert "control" in (identifier_problem("a\x00", 255) or "")
    assert "surrogate" in (identifier_problem("a\ud800", 255) or "")
