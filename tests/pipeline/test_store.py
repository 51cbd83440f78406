"""Store encoding: float16 and int8 round trips, schema, masks; manifests checked strictly."""
import json
import re

import numpy as np
import pyarrow as pa
import pytest

from pipeline.store import StoreLayout, decode_tokens, encode_token_block, nonfinite_rows, token_mask


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


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_non_finite_rows_are_found_in_any_chunk(dtype):
    values = np.random.default_rng(3).normal(size=(6, 2, 3)).astype(np.float32)
    values[0, 0, 0] = 65504.0            # the largest float16: finite
    values[2, 1, 2] = np.nan
    values[4, 0, 1] = -np.inf
    with np.errstate(invalid="ignore"):   # int8: quantizing a NaN row (its scale is NaN) warns
        table, _ = table_for(values, dtype)
    bad, column = nonfinite_rows(pa.concat_tables([table.slice(0, 3), table.slice(3)]))
    assert list(np.flatnonzero(bad)) == [2, 4]
    assert column == ("tokens" if dtype == "float16" else "token_scale")
    clean, none = nonfinite_rows(table.slice(0, 2))
    assert not clean.any() and none is None


def test_token_mask_from_num_tokens():
    assert token_mask(np.array([1, 3, 9]), 4).tolist() == [
        [True, False, False, False], [True, True, True, False], [True, True, True, True]]


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype 'float8' is not allowed: choose one of float16, int8"):
        StoreLayout("left", 4, 8, "float8", None)


GOOD_MANIFEST = {"model_fingerprint": "f" * 64, "encoder": "enc", "side": "left", "tokens_kept": 4, "dim": 8,
                 "dtype": "float16", "pooled_dim": None, "token_selection": "first", "max_length": 16, "rows": 3,
                 "files": ["part-00000-of-00001.parquet"], "schema_version": 1}


def test_manifest_round_trips_and_every_value_is_checked():
    from pipeline.store import StoreError, StoreManifest
    manifest = StoreManifest.from_json(json.dumps(GOOD_MANIFEST), "m.json")
    assert StoreManifest.from_json(manifest.to_json()) == manifest
    for changes, message in [({"dim": True}, "dim is True, expected an integer >= 1"),
                             ({"pooled_dim": 0}, "pooled_dim is 0"),
                             ({"files": ["part-0.parquet", "part-0.parquet"]}, "more than once"),
                             ({"files": ["part-0.parquet\x00/../x"]}, "not a part file"),
                             ({"model_fingerprint": ""}, "model_fingerprint is ''")]:
        with pytest.raises(StoreError, match=f"store manifest m.json is invalid: .*{re.escape(message)}"):
            StoreManifest.from_json(json.dumps({**GOOD_MANIFEST, **changes}), "m.json")
    with pytest.raises(StoreError, match="m.json holds a JSON list, not an object"):
        StoreManifest.from_json("[]", "m.json")


@pytest.mark.parametrize("name, ok", [("part-00000-of-00001.parquet", True), ("part.parquet", True),
                                      ("../part-0.parquet", False), ("/abs/part-0.parquet", False),
                                      ("part-0.parquet/..", False), ("..\\part-0.parquet", False),
                                      ("gs://b/part-0.parquet", False), (" part-0.parquet", False),
                                      ("data.parquet", False), ("part-0.json", False)])
def test_part_file_names_stay_inside_the_store(name, ok):
    from pipeline.store import is_part_file_name
    assert is_part_file_name(name) is ok
