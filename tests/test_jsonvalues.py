"""onceflow.connectors.jsonvalues: the JSON every connector reads and writes. Decoding is
strict JSON (msgspec) with Python's ``json`` behind it for what our encoders add (NaN,
Infinity); each case here is compared with what Python's ``json`` module reads."""

from __future__ import annotations

import json
import math

import pytest

from onceflow.connectors.jsonvalues import DecodeError, decode, dumps, loads

_SAME_AS_STDLIB = [
    b'{"a": 1, "b": [1.5, -0.0, 5e-324, 1.7976931348623157e308], "c": null, "d": true}',
    b"123456789012345678901234567890",  # past 64 bits: exact (orjson gave a float)
    b"-9223372036854775809",
    b'{"a": 1, "a": 2}',  # the last of a repeated key wins
    b'"\\ud83d\\ude00 \\u0000 caf\\u00e9"',
    '"é and ü"',  # str input
    b" [1, 2] ",
]


@pytest.mark.parametrize("data", _SAME_AS_STDLIB)
def test_values_are_what_pythons_json_reads(data: bytes | str) -> None:
    want = json.loads(data)
    got = loads(data)
    assert got == want and type(got) is type(want)
    assert json.dumps(decode(data)) == json.dumps(want)


def test_nan_and_infinities_our_encoders_write_are_read_back() -> None:
    rec = {"lo": -math.inf, "hi": math.inf, "x": math.nan, "n": 10**25}
    back = loads(dumps(rec))
    assert back["lo"] == -math.inf and back["hi"] == math.inf and math.isnan(back["x"])
    assert back["n"] == 10**25 and type(back["n"]) is int
    with pytest.raises(DecodeError):
        decode(b"NaN")  # strict JSON alone refuses it: the connectors' fast path falls back


@pytest.mark.parametrize("bad", [b'{"i": ', b"[1,]", b"01", b'{"a":1} x',
                                 b'"\xff"', b""])
def test_what_is_not_json_is_an_error_as_pythons_json_says(bad: bytes) -> None:
    with pytest.raises(ValueError):  # json.JSONDecodeError and msgspec's are ValueErrors
        loads(bad)
    with pytest.raises(ValueError):
        json.loads(bad)


def test_integers_past_64_bits_are_written_exactly_and_read_back() -> None:
    rec = {"id": 10**30, "neg": -(2**70), "ok": 2**64 - 1, "in": [1, [2**100]],
           "n": math.nan}
    data = dumps(rec)
    assert json.loads(data) == {**rec, "n": json.loads(data)["n"]}
    back = loads(data)
    assert back["in"][1][0] == 2**100 and type(back["id"]) is int and math.isnan(back["n"])
    assert dumps({"id": 2**64 - 1}) == b'{"id":18446744073709551615}'  # orjson's own
    with pytest.raises(TypeError):
        dumps({"x": object()})  # what no JSON can hold is still an error


def test_nesting_deeper_than_the_stack_is_an_error_not_a_crash() -> None:
    with pytest.raises(RecursionError):
        loads(b"[" * 1_000_000 + b"]" * 1_000_000)
