"""Request bodies read as Ollama's Go decoder reads them: keys folded, two spellings of one field refused."""

from __future__ import annotations

import pytest

from mlops_backend.errors import ApiError
from mlops_backend.security.json_body import field, fold, parse_object


@pytest.mark.parametrize("key", ["stream", "Stream", "STREAM", "sTrEaM", "\u017ftream", "\u017fTREAM"])
def test_every_spelling_go_reads_as_stream_folds_to_it(key):
    assert fold(key) == "stream"


def test_the_kelvin_sign_folds_with_k_as_in_go():
    assert fold("\u212a") == fold("k") == fold("K")


@pytest.mark.parametrize("key", ["destination", "DESTINATION", "dest\u0131nation", "DEST\u0130NATION"])
def test_both_turkish_is_fold_with_i_which_is_looser_than_go_and_so_safe(key):
    assert fold(key) == "destination"


def test_field_reads_the_value_ollama_reads():
    body = parse_object(b'{"MODEL": "qwen3", "\xc5\xbftream": false}')
    assert field(body, "model") == "qwen3" and field(body, "stream") is False
    assert field(body, "name") is None and field(body, "name", "x") == "x"


@pytest.mark.parametrize("raw", [b'{"model": "a", "MODEL": "b"}', b'{"stream": false, "Stream": true}',
                                 '{"stream": false, "\u017ftream": true}'.encode(),
                                 b'{"Destination": "a", "destination": "b"}'])
def test_two_keys_that_fold_to_one_field_are_refused(raw):
    with pytest.raises(ApiError) as caught:
        parse_object(raw)
    assert caught.value.status == 400 and caught.value.slug == "ambiguous-field"
    assert "Ambiguous field" in caught.value.detail


def test_nested_maps_are_left_alone():
    # `options` and `format` are Go maps: their keys are exact, so "Name" and "name" are two keys there.
    body = parse_object(b'{"model": "m", "format": {"properties": {"Name": {}, "name": {}}}}')
    assert set(body["format"]["properties"]) == {"Name", "name"}


@pytest.mark.parametrize("raw,detail", [(b"[1]", "must be a JSON object"), (b"{", "not valid JSON"),
                                        (b'"x"', "must be a JSON object")])
def test_what_is_not_a_json_object_is_a_400(raw, detail):
    with pytest.raises(ApiError) as caught:
        parse_object(raw)
    assert caught.value.status == 400 and detail in caught.value.detail
