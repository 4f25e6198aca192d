"""Reading, validation, id mapping and aggregation of interaction logs."""

import string

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svdfaiss.data import (
    REASON_BLANK,
    REASON_MALFORMED,
    REASON_NEGATIVE,
    REASON_NO_USER,
    REASON_NON_FINITE,
    REASON_NON_NUMERIC,
    ReadOptions,
    _sorted_codes_ascii,
    _sorted_codes_strings,
    build_interactions,
    decode_ids,
    lookup,
    lookup_one,
    read_log,
)
from svdfaiss.errors import InvalidInput


def write(tmp_path, text, name="log.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_header_is_detected_and_ids_keep_leading_zeros(tmp_path):
    path = write(tmp_path, "user_id,item_id,rating\n007,0001,5\n7,1,4\n")
    log = read_log(path)
    assert log.feedback == "explicit"
    assert decode_ids(log.user_ids) == ["007", "7"]
    assert decode_ids(log.item_ids) == ["0001", "1"]
    assert log.rows_read == 2


def test_headerless_amazon_layout_is_read_as_user_item_rating_time(tmp_path):
    path = write(tmp_path, "AKM1MP6P0OYPR,0132793040,5.0,1365811200\n"
                           "A2CX7LUOHB2NDG,0321732944,5.0,1341100800\n")
    log = read_log(path)
    assert log.columns.value == "column_2" and log.columns.timestamp == "column_3"
    assert log.feedback == "explicit"
    assert decode_ids(log.item_ids) == ["0132793040", "0321732944"]
    np.testing.assert_array_equal(np.sort(log.values), [5.0, 5.0])


def test_tsv_and_parquet_read_like_csv(tmp_path):
    csv_log = read_log(write(tmp_path, "user,item,count\nu1,i1,2\nu2,i1,1\n"))
    tsv_log = read_log(write(tmp_path, "user\titem\tcount\nu1\ti1\t2\nu2\ti1\t1\n", "log.tsv"))
    table = pa.table({"user": ["u1", "u2"], "item": ["i1", "i1"], "count": [2, 1]})
    pq.write_table(table, tmp_path / "log.parquet")
    pq_log = read_log(tmp_path / "log.parquet")
    for log in (tsv_log, pq_log):
        assert log.feedback == csv_log.feedback == "implicit"
        assert decode_ids(log.user_ids) == decode_ids(csv_log.user_ids)
        np.testing.assert_array_equal(log.values, csv_log.values)


def test_columns_can_be_named_or_numbered(tmp_path):
    path = write(tmp_path, "ts,item,who,stars\n1,a,u1,3\n2,b,u2,4\n")
    log = read_log(path, ReadOptions(user_col="who", item_col="1", value_col="stars"))
    assert decode_ids(log.user_ids) == ["u1", "u2"]
    assert log.columns.timestamp == "ts"
    with pytest.raises(InvalidInput, match="no column named 'nope'"):
        read_log(path, ReadOptions(user_col="nope"))


def test_bad_rows_are_counted_by_reason_with_line_numbers(tmp_path):
    text = ("user,item,rating\n"      # line 1
            "u1,i1,5\n"               # 2 ok
            "u2,i2\n"                 # 3 malformed
            "\n"                      # 4 blank
            ",i3,4\n"                 # 5 missing user
            "u4,i4,abc\n"             # 6 non-numeric
            "u5,i5,nan\n"             # 7 non-finite
            "u6,i6,inf\n"             # 8 non-finite
            "u7,i7,1,2,3\n"           # 9 malformed
            "u8,i8,2\n")              # 10 ok
    log = read_log(write(tmp_path, text))
    counts = log.rejected.counts
    assert counts == {REASON_MALFORMED: 2, REASON_BLANK: 1, REASON_NO_USER: 1,
                      REASON_NON_NUMERIC: 1, REASON_NON_FINITE: 2}
    lines = {(e["reason"], e["line"]) for e in log.rejected.examples}
    assert lines == {(REASON_MALFORMED, 3), (REASON_MALFORMED, 9), (REASON_BLANK, 4),
                     (REASON_NO_USER, 5), (REASON_NON_NUMERIC, 6), (REASON_NON_FINITE, 7),
                     (REASON_NON_FINITE, 8)}
    assert log.rows_read == 9
    assert decode_ids(log.user_ids) == ["u1", "u8"]


def test_strict_turns_any_bad_row_into_an_error_naming_the_line(tmp_path):
    path = write(tmp_path, "user,item,rating\nu1,i1,5\nu2,i2,oops\n")
    with pytest.raises(InvalidInput, match=r"non-numeric value: 1 \(line 3\)"):
        read_log(path, ReadOptions(strict=True))


def test_negative_counts_are_rejected_in_implicit_mode_only(tmp_path):
    path = write(tmp_path, "user,item,quantity\nu1,i1,2\nu2,i1,-1\nu3,i2,1\n")
    log = read_log(path)
    assert log.feedback == "implicit"
    assert log.rejected.counts == {REASON_NEGATIVE: 1}
    explicit = read_log(path, ReadOptions(feedback="explicit"))
    assert explicit.rejected.total == 0


def test_implicit_duplicates_sum_and_explicit_keep_the_latest(tmp_path):
    implicit = read_log(write(tmp_path, "user,item,quantity\nu,a,1\nu,a,2\nu,b,1\nv,a,1\n"))
    inter = build_interactions(implicit)
    assert inter.matrix.toarray().tolist() == [[3.0, 1.0], [1.0, 0.0]]
    assert inter.duplicates_merged == 1
    # The latest by timestamp wins even when it comes first in the file.
    explicit = read_log(write(tmp_path, "user,item,rating,timestamp\nu,a,5,200\nu,a,1,100\n"
                                        "v,a,3,1\nv,b,2,1\n", "e.csv"))
    assert build_interactions(explicit).matrix.toarray().tolist() == [[5.0, 0.0], [3.0, 2.0]]
    mean = build_interactions(explicit, duplicates="mean")
    assert mean.matrix.toarray().tolist() == [[3.0, 0.0], [3.0, 2.0]]


def test_minimum_filters_hold_together(tmp_path):
    # u3 has 2 items but one of them (c) has a single user: dropping c drops u3 below 2.
    text = "user,item\nu1,a\nu1,b\nu2,a\nu2,b\nu3,a\nu3,c\n"
    inter = build_interactions(read_log(write(tmp_path, text)), 2, 2)
    assert decode_ids(inter.user_ids) == ["u1", "u2"]
    assert decode_ids(inter.item_ids) == ["a", "b"]
    assert inter.filtered_users == 1 and inter.filtered_items == 1
    assert (inter.matrix.getnnz(axis=1) >= 2).all() and (inter.matrix.getnnz(axis=0) >= 2).all()
    assert inter.rows_used == 4 and inter.filtered_rows == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "file is empty"),
        ("user_id,item_id,rating\n", "no data rows"),
        ("user_id\nu1\n", "single column"),
        ("user,item,rating\nu1,i1,x\nu2,i2,y\n", "no usable rows"),
    ],
)
def test_unusable_files_raise_clear_errors(tmp_path, content, message):
    with pytest.raises(InvalidInput, match=message):
        read_log(write(tmp_path, content))


def test_unknown_format_and_unreadable_file(tmp_path):
    odd = tmp_path / "log.xlsx"
    odd.write_bytes(b"PK\x03\x04 binary")
    with pytest.raises(InvalidInput, match=r"unknown format '\.xlsx'"):
        read_log(odd)
    with pytest.raises(InvalidInput, match="no such file"):
        read_log(tmp_path / "missing.csv")


def test_lookup_finds_exact_ids_only():
    ids = np.array([b"0001", b"01", b"1", b"abc"], dtype="S4")
    assert lookup(ids, ["1", "01", "0001", "abc"]).tolist() == [2, 1, 0, 3]
    assert lookup(ids, ["001", "abcd", "abc\x00", "", "ab"]).tolist() == [-1] * 5
    queries = ["1", "01", "0001", "abc", "001", "abcd", "abc\x00", "", "ab", "zzzzz", "\x00"]
    assert [lookup_one(ids, q) for q in queries] == lookup(ids, queries).tolist()


ascii_ids = st.text(alphabet=string.ascii_letters + string.digits + "-_.:/ ", min_size=1,
                    max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.lists(ascii_ids, min_size=1, max_size=60))
def test_integer_fast_path_equals_the_string_path(ids):
    column = pa.array(ids, type=pa.string())
    fast = _sorted_codes_ascii(column)
    slow_codes, slow_ids = _sorted_codes_strings(column)
    assert fast is not None
    codes, sorted_ids = fast
    assert decode_ids(sorted_ids) == sorted(set(ids), key=lambda s: s.encode())
    assert decode_ids(sorted_ids) == decode_ids(slow_ids)
    np.testing.assert_array_equal(codes, slow_codes)
    assert [decode_ids(sorted_ids)[c] for c in codes] == ids


def test_non_ascii_ids_take_the_string_path_and_stay_exact(tmp_path):
    log = read_log(write(tmp_path, "user,item\nzoë,café\nzoe,cafe\n"))
    assert decode_ids(log.user_ids) == ["zoe", "zoë"]
    assert lookup(log.item_ids, ["café"]).tolist() == [1]
