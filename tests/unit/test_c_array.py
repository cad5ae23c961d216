"""The generated C array read back: every byte value, the export's layout, and a malformed token refused."""

import pytest

from kerasport.devices import parse_c_array


def c_source(data: bytes, per_line: int = 16) -> str:
    rows = [", ".join(f"0x{value:02x}" for value in data[start:start + per_line])
            for start in range(0, len(data), per_line)]
    return ("// generated\nalignas(16) const unsigned char g_model[] = {\n  " + ",\n  ".join(rows)
            + ",\n};\nconst unsigned int g_model_len = " + str(len(data)) + ";\n")


def test_every_byte_value_round_trips():
    data = bytes(range(256)) * 3 + b"\x00\xff"
    assert parse_c_array(c_source(data)) == data
    assert parse_c_array(c_source(data).replace("0x", "0X").upper().replace("ALIGNAS", "alignas")) == data


def test_a_token_that_is_not_hex_is_refused():
    with pytest.raises(ValueError, match="not 0x followed by two hex digits"):
        parse_c_array(c_source(b"\x01\x02").replace("0x02", "0xg2"))
