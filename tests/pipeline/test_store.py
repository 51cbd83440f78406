"""Store encoding: float16 and int8 round trips, schema, masks."""
import numpy as np
import pyarrow as pa
import pytest

from pipeline.store import StoreLayout, decode_tokens, encode_token_block, token_mask


def table_for(values, dtype):
    layout = StoreLayout("left", values.shape[1], values.shape[2], dtype, None)
    blobs, scales = encode_token_block(values, dtype)
    data = {"id": [str(i) for i in range(len(values))], "text_hash": ["h"] * len(values),
            "num_tokens": [3] * len(values), "truncated": [False] * len(values), "tokens": blobs}
    if scales is not None:
        data["token_scale"] = scales
    return pa.Table.from_pydict(data, schema=layout.schema()), layout


def test_float16_round_trip_is_exact_to_half_precision():
    values = np.random.default_rng(0).normal(size=(5, 4, 8)).astype(np.float32)
    table, layout = table_for(values, "float16")
    assert table.schema.field("tokens").type == pa.binary(4 * 8 * 2)
    np.testing.assert_array_equal(decode_tokens(table, layout), values.astype(np.float16).astype(np.float32))


def test_int8_uses_half_the_bytes_and_stays_close():
    values = np.random.default_rng(1).normal(size=(5, 4, 8)).astype(np.float32)
    values[2] = 0.0  # an all-zero row decodes to zeros
    table, layout = table_for(values, "int8")
    assert table.schema.field("tokens").type == pa.binary(4 * 8)
    decoded = decode_tokens(table, layout)
    step = np.abs(values).reshape(5, -1).max(axis=1) / 127
    assert np.all(np.abs(decoded - values) <= step[:, None, None] / 2 + 1e-7)
    assert np.all(decoded[2] == 0)


def test_decoding_works_on_sliced_chunks():
    values = np.random.default_rng(2).normal(size=(6, 2, 3)).astype(np.float32)
    table, layout = table_for(values, "float16")
    sliced = pa.concat_tables([table.slice(1, 2), table.slice(4, 2)])
    np.testing.assert_array_equal(decode_tokens(sliced, layout),
                                  values[[1, 2, 4, 5]].astype(np.float16).astype(np.float32))


def test_token_mask_from_num_tokens():
    assert token_mask(np.array([1, 3, 9]), 4).tolist() == [
        [True, False, False, False], [True, True, True, False], [True, True, True, True]]


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype 'float8' is not allowed: choose one of float16, int8"):
        StoreLayout("left", 4, 8, "float8", None)
