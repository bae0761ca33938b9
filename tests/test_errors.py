"""Bad input gives a clear lfopt error whose message names the problem.

Every check looks at the message: the file, the line, the column and the
offending value, so that a user can find and fix the problem.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import lfopt
from lfopt import ConfigError, DataError, Interactions, LatentFactorModel

H_ML20M = "userId,movieId,rating,timestamp\n"


def load_error(path, **kwargs) -> str:
    """Load ``path`` expecting a DataError; return its message."""
    with pytest.raises(DataError) as info:
        lfopt.load_data(path, **kwargs)
    return str(info.value)


def test_error_hierarchy():
    for cls in (DataError, ConfigError, lfopt.ModelFileError, lfopt.DivergenceError):
        assert issubclass(cls, lfopt.LfoptError)
    assert issubclass(DataError, ValueError) and issubclass(ConfigError, ValueError)


# ================================================================= file level
class TestFileLevel:
    def test_missing_file(self, tmp_path):
        msg = load_error(tmp_path / "nowhere" / "ratings.dat")
        assert "ratings.dat" in msg and "no such file" in msg

    def test_directory(self, tmp_path):
        msg = load_error(tmp_path)
        assert str(tmp_path) in msg and "directory" in msg

    def test_unknown_format_name(self, write):
        msg = load_error(write("a.tsv", "1 2 3\n"), format="excel")
        assert "'excel'" in msg and "ml-1m" in msg  # names the bad value and the choices

    def test_undetectable_extension(self, write):
        msg = load_error(write("ratings.xlsx", "1 2 3\n"))
        assert "ratings.xlsx" in msg and "format" in msg

    @pytest.mark.parametrize("name", ["ratings.dat", "u.data", "ratings.csv", "x.csv", "x.tsv"])
    @pytest.mark.parametrize("content", ["", "\n\n", "  \n"])
    def test_empty_file(self, write, name, content):
        msg = load_error(write(name, content))
        assert name in msg and "empty" in msg

    def test_header_but_no_data(self, write):
        msg = load_error(write("ratings.csv", H_ML20M))
        assert "ratings.csv" in msg and "no data" in msg

    def test_not_utf8(self, write):
        msg = load_error(write("ratings.dat", b"\xff\xfe\x00::1::3\n"))
        assert "ratings.dat" in msg

    @pytest.mark.parametrize("name, content, line, byte", [
        ("ratings.dat", b"1::1::5\n2::3::4\n3::4\xff::5\n", 3, 5),
        ("x.tsv", b"ann\t1\t5\nbob\t2\t4\nren\xe9e\t3\t2\n", 3, 4),  # latin-1 'e acute'
        ("x.csv", b"user,item,rating\n1,caf\xe9,4\n", 2, 6),
    ])
    def test_not_utf8_names_the_line(self, write, name, content, line, byte):
        msg = load_error(write(name, content))
        assert f"{name}, line {line}, byte {byte}: not UTF-8" in msg

    def test_corrupt_parquet(self, write):
        pytest.importorskip("pyarrow")
        msg = load_error(write("bad.parquet", b"this is not parquet"))
        assert "bad.parquet" in msg and "Parquet" in msg

    def test_corrupt_mat(self, write):
        msg = load_error(write("bad.mat", b"not an HDF5 file"))
        assert "bad.mat" in msg and "HDF5" in msg and "v5" in msg  # neither kind of MATLAB header

    def test_mat_missing_variables(self, tmp_path):
        import h5py

        path = tmp_path / "partial.mat"
        with h5py.File(path, "w") as f:
            f["M"] = np.ones((3, 3))
        msg = load_error(path, format="monti")
        assert "partial.mat" in msg and "Otraining" in msg and "Otest" in msg


# ============================================================ MATLAB files
def _overwrite(src, dst, offset, n=512, seed=0):
    raw = bytearray(src.read_bytes())
    raw[offset:offset + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(raw))
    return dst


class TestMatErrors:
    @pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
    def test_corrupted_douban_copy_is_a_data_error(self, douban_path, tmp_path, where):
        size = douban_path.stat().st_size
        path = _overwrite(douban_path, tmp_path / "douban.mat", int(size * where))
        msg = load_error(path)  # a DataError: never h5py's OSError
        assert "douban.mat" in msg and "damaged" in msg

    def test_corrupted_header_of_v73(self, douban_path, tmp_path):
        path = _overwrite(douban_path, tmp_path / "douban.mat", 600, n=200)
        assert "douban.mat" in load_error(path)

    @pytest.mark.parametrize("compress", [False, True])
    def test_corrupted_v5_is_a_data_error(self, tmp_path, compress):
        import scipy.io

        src = tmp_path / "src.mat"
        rng = np.random.default_rng(0)
        scipy.io.savemat(src, {"rating": np.c_[rng.integers(1, 50, 500), rng.integers(1, 50, 500),
                                               rng.integers(1, 6, 500)].astype(float)}, do_compression=compress)
        path = _overwrite(src, tmp_path / "bad.mat", 130 if not compress else src.stat().st_size // 2, n=64)
        msg = load_error(path, duplicates="last")
        assert "bad.mat" in msg

    def test_v5_many_columns_need_a_mapping(self, tmp_path):
        import scipy.io

        rng = np.random.default_rng(0)
        t = np.c_[rng.integers(1, 9, 50), np.arange(50), rng.integers(1, 20, 50), rng.integers(1, 6, 50),
                  rng.integers(0, 5, 50)].astype(float)
        scipy.io.savemat(tmp_path / "rating.mat", {"rating": t})
        msg = load_error(tmp_path / "rating.mat")
        assert "5 columns" in msg and "columns=" in msg and "--columns user=0,item=1,rating=3" in msg

    def test_v5_four_columns_without_timestamp(self, tmp_path):
        import scipy.io

        t = np.c_[np.arange(30) % 7, np.arange(30), np.arange(30) % 11 + 1, np.arange(30) % 5 + 1].astype(float)
        scipy.io.savemat(tmp_path / "r.mat", {"r": t})
        msg = load_error(tmp_path / "r.mat")
        assert "not a plausible timestamp" in msg and "variable 'r'" in msg

    def test_several_variables_need_a_name(self, tmp_path):
        import scipy.io

        scipy.io.savemat(tmp_path / "two.mat", {"a": np.ones((10, 3)), "b": np.ones((10, 3))})
        msg = load_error(tmp_path / "two.mat")
        assert "several numeric variables" in msg and "variable=" in msg and "--columns variable=" in msg
        msg = load_error(tmp_path / "two.mat", variable="c")
        assert "no variable 'c'" in msg

    def test_no_numeric_variable(self, tmp_path):
        import scipy.io

        scipy.io.savemat(tmp_path / "text.mat", {"names": np.array(["ann", "bob"])})
        assert "no numeric matrix" in load_error(tmp_path / "text.mat")

    def test_monti_pair_in_both_masks_is_reported(self, tmp_path):
        import scipy.io

        M = np.zeros((4, 4))
        M[0, 0], M[1, 1], M[2, 2], M[3, 3] = 5, 4, 3, 2
        train = (M != 0) * 1.0
        test = np.zeros_like(M)
        test[2, 2] = test[3, 3] = 1  # both also in Otraining
        scipy.io.savemat(tmp_path / "monti.mat", {"M": M, "Otraining": train, "Otest": test})
        with pytest.warns(lfopt.data.io.DataWarning, match=r"2 \(user, item\) pair\(s\) are marked in both"):
            d = lfopt.load_data(tmp_path / "monti.mat")
        tr, te = lfopt.fixed_split(d)
        assert (tr.nnz, te.nnz) == (2, 2) and d.meta["n_in_both_masks"] == 2

    def test_monti_mask_with_other_values(self, tmp_path):
        import scipy.io

        M = np.eye(3) * 4
        scipy.io.savemat(tmp_path / "m.mat", {"M": M, "Otraining": np.eye(3) * 7, "Otest": np.zeros((3, 3))})
        assert "Otraining[0, 0] = 7.0" in load_error(tmp_path / "m.mat")

    def test_monti_rating_outside_the_masks_is_reported(self, tmp_path):
        import scipy.io

        M = np.eye(3) * 4
        train = np.eye(3)
        train[2, 2] = 0
        scipy.io.savemat(tmp_path / "m.mat", {"M": M, "Otraining": train, "Otest": np.zeros((3, 3))})
        with pytest.warns(lfopt.data.io.DataWarning, match="1 non-zero rating"):
            assert lfopt.load_data(tmp_path / "m.mat").nnz == 2


# =================================================== 4th column: a timestamp?
class TestFourthColumn:
    CATEGORY = "1 10 3 4\n1 11 7 5\n2 10 3 2\n2 12 19 1\n"  # user item category rating

    def test_category_column_is_refused_with_advice(self, write):
        msg = load_error(write("ciao.txt", self.CATEGORY))
        assert "ciao.txt" in msg and "4th column is not a plausible timestamp" in msg
        assert "largest value, 5" in msg and "line 2" in msg  # the evidence
        assert "columns={'user': 0, 'item': 1, 'rating': 3}" in msg and "--columns user=0,item=1,rating=3" in msg

    def test_fractional_fourth_column(self, write):
        msg = load_error(write("x.tsv", "1 1 4 978300760\n1 2 5 2.5\n"))
        assert "line 2: 2.5 is not a whole number" in msg

    def test_negative_fourth_column(self, write):
        assert "line 1: -4" in load_error(write("x.tsv", "1 1 4 -4\n1 2 5 978300760\n"))

    def test_with_columns_it_loads_the_real_ratings(self, write):
        d = lfopt.load_data(write("ciao.txt", self.CATEGORY), columns={"user": 0, "item": 1, "rating": 3})
        assert sorted(d.values.tolist()) == [1.0, 2.0, 4.0, 5.0]

    def test_movielens_formats_are_not_second_guessed(self, write):
        d = lfopt.load_data(write("ratings.dat", "1::1::5::9\n1::2::4::9\n"))
        assert d.timestamps.tolist() == [9, 9]


# ================================================================= line level
class TestMalformedLines:
    @pytest.mark.parametrize("name, content, line, expected, found", [
        ("ratings.dat", "1::1::5\n1::2::4\n2::1::3::5::6\n", 3, 3, 5),
        ("ratings.dat", "1::1::5::9\n1::2::4::9\n2::1::3::9::7\n1::3::2::1\n", 3, 4, 5),
        ("u.data", "1\t1\t5\t100\n1\t2\t4\t5\t7\n", 2, 4, 5),
        ("ratings.csv", H_ML20M + "1,1,4.5,100\n1,2,3.0,200,5\n", 3, 4, 5),
    ])
    def test_too_many_fields_names_line(self, write, name, content, line, expected, found):
        msg = load_error(write(name, content))
        assert name in msg
        assert f"line {line}" in msg
        assert f"expected {expected} fields" in msg and f"found {found}" in msg

    @pytest.mark.parametrize("name, content, line, column", [
        ("ratings.dat", "1::1::5\n1::2::4\n2::1\n", 3, "column 3 (rating)"),
        ("u.data", "1\t1\t5\t100\n1\t2\t4\n", 2, "column 4 (timestamp)"),
        ("ratings.csv", H_ML20M + "1,1,4.5,100\n1,,3.0,200\n", 3, "column 2 (item)"),
    ])
    def test_too_few_fields_names_line_and_column(self, write, name, content, line, column):
        msg = load_error(write(name, content))
        assert name in msg and f"line {line}," in msg and column in msg and "missing" in msg

    def test_blank_line_in_the_middle(self, write):
        msg = load_error(write("ratings.dat", "1::1::5\n2::1::4\n\n2::2::3\n"))
        assert "ratings.dat, line 3" in msg and "empty line" in msg

    def test_mixed_three_and_four_fields(self, write):
        msg = load_error(write("ratings.dat", "1::1::5\n1::2::4::978300760\n2::1::3\n"))
        assert "line 2" in msg and "expected 3 fields, found 4" in msg

    @pytest.mark.parametrize("name, content", [
        ("x.tsv", "a b 3 1 2 3\nc b 4 1 2 3\n"),
        ("users.dat", "1\n2\n"),
    ])
    def test_wrong_field_count_in_tsv_names_file(self, write, name, content):
        msg = load_error(write(name, content))
        assert "expected 2 to 4 fields" in msg  # this part is there already
        assert name in msg


# ================================================================ value level
NON_NUMERIC_RATING = [
    ("ratings.dat", "1::1::5\n1::2::x\n2::1::3\n", 2, "'x'"),
    ("u.data", "1\t1\t5\t100\n1\t2\tfoo\t5\n", 2, "'foo'"),
    ("ratings.csv", H_ML20M + "1,1,4.5,100\n1,2,bad,200\n", 3, "'bad'"),
    ("x.tsv", "a b 3\nc b four\n", 2, "'four'"),
]


class TestBadValues:
    @pytest.mark.parametrize("name, content, line, value", NON_NUMERIC_RATING)
    def test_non_numeric_rating(self, write, name, content, line, value):
        msg = load_error(write(name, content))
        assert name in msg and f"line {line}" in msg and "column 3 (rating)" in msg and value in msg

    def test_non_numeric_timestamp(self, write):
        msg = load_error(write("u.data", "1\t1\t5\t100\n1\t2\t3\tyesterday\n"))
        assert "line 2" in msg and "timestamp" in msg and "'yesterday'" in msg

    @pytest.mark.parametrize("content, line, shown", [
        ("1::1::5\n1::2::nan\n2::1::3\n", 2, "missing value"),
        ("1::1::5\n1::2::inf\n2::1::3\n", 2, "inf"),
        ("1::1::5\n1::2::3\n2::1::-inf\n", 3, "-inf"),
        ("1::1::5\n1::2::1e400\n2::1::3\n", 2, "inf"),  # overflows to inf
    ])
    def test_nan_and_inf_ratings_in_file(self, write, content, line, shown):
        msg = load_error(write("ratings.dat", content))
        assert f"ratings.dat, line {line}" in msg and "column 3 (rating)" in msg and shown in msg

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_nan_and_inf_ratings_in_arrays(self, bad):
        with pytest.raises(DataError, match=r"entry 2: .*not a finite number"):
            Interactions.from_arrays([1, 2, 3], [1, 2, 3], [1.0, 2.0, bad])

    def test_non_numeric_values_in_arrays(self):
        with pytest.raises(DataError, match=r"entry 1: value 'x' is not a number"):
            Interactions.from_arrays([1, 2], [1, 2], np.array(["4", "x"], dtype=object))

    def test_dataframe_error_names_row_and_index(self):
        df = pd.DataFrame({"user": [1, 2, 3], "item": [1, 2, 3], "rating": [1.0, np.nan, 3.0]},
                          index=[100, 200, 300])
        with pytest.raises(DataError, match=r"row 1 \(index .*200"):
            Interactions.from_dataframe(df)

    def test_scipy_nan_entry_is_located(self):
        import scipy.sparse as sp

        m = sp.csr_matrix(np.array([[0.0, 1.0], [np.nan, 0.0]]))
        with pytest.raises(DataError, match=r"matrix entry \(1, 0\)"):
            Interactions.from_scipy(m)

    @pytest.mark.parametrize("name, content, line, value, beyond", [
        ("x.tsv", "1 1 3\n1 2 1e39\n", 2, "1e+39", True),  # beyond float32: would become inf
        ("x.tsv", "1 1 3\n1 2 1e30\n", 2, "1e+30", False),  # squared sums overflow float32
        ("ratings.dat", "1::1::5\n1::2::4\n2::1::-2e16\n", 3, "-2e+16", False),
        ("ratings.csv", H_ML20M + "1,1,4.5,100\n2,7,3e300,200\n", 3, "3e+300", True),
    ])
    def test_huge_ratings_are_refused_where_they_are(self, write, name, content, line, value, beyond):
        msg = load_error(write(name, content))
        assert f"{name}, line {line}, column 3 (rating): rating {value} is too large" in msg
        assert ("beyond float32's range" in msg) == beyond

    def test_large_but_trainable_ratings_load(self, write):
        assert lfopt.load_data(write("x.tsv", "1 1 3\n1 2 1e14\n")).values.max() == np.float32(1e14)

    def test_rating_too_small_for_float32(self, write):
        msg = load_error(write("x.tsv", "1 1 3\n1 2 1e-50\n"))
        assert "line 2" in msg and "too small for float32" in msg

    def test_huge_ratings_in_arrays_and_matrices(self):
        import scipy.sparse as sp

        with pytest.raises(DataError, match=r"entry 1: value 1e\+20 is too large"):
            Interactions.from_arrays([1, 2], [1, 2], [1.0, 1e20])
        with pytest.raises(DataError, match=r"matrix entry \(1, 0\): value 1e\+39 is too large"):
            Interactions.from_scipy(sp.csr_matrix(np.array([[0.0, 1.0], [1e39, 0.0]])))

    def test_timestamp_beyond_int64(self):
        with pytest.raises(DataError, match=r"entry 1: timestamp .* within int64"):
            Interactions.from_arrays([1, 2], [1, 2], [1.0, 2.0], timestamps=np.array([1, 2**63 + 9], np.uint64))
        with pytest.raises(DataError, match=r"entry 0: timestamp nan"):
            Interactions.from_arrays([1, 2], [1, 2], [1.0, 2.0], timestamps=[np.nan, 5.0])

    def test_zero_ratings_on_a_star_scale_are_reported(self, write):
        with pytest.warns(lfopt.data.io.DataWarning, match=r"2 rating\(s\) are 0 \(first at line 3\).*1\.\.5"):
            d = lfopt.load_data(write("ratings.dat", "1::1::5\n1::2::1\n2::1::0\n2::2::3\n3::1::0\n"))
        assert d.nnz == 5  # reported, not dropped

    @pytest.mark.parametrize("content", [
        "1 1 0\n1 2 -1\n2 1 1\n",  # a -1..1 scale: 0 is a real value
        "1 1 0\n1 2 37\n2 1 120\n",  # counts
        "1 1 2\n1 2 4\n",  # no zero
    ])
    def test_zero_ratings_elsewhere_are_fine(self, write, content):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lfopt.load_data(write("x.tsv", content))

    def test_messages_show_plain_values(self, write):
        messages = [
            load_error(write("ratings.dat", "1::1::5\n1::2::inf\n")),
            load_error(write("u.data", "1\t1\t5\t1\n1\t1\t3\t2\n")),
            load_error(write("ratings.dat", "1::1::5\n1.5::2::4\n")),
        ]
        for msg in messages:
            assert "np." not in msg, msg


class TestIds:
    @pytest.mark.parametrize("name, content, line, what, value", [
        ("ratings.dat", "1::1::5\n-1::2::4\n", 2, "user", "-1"),
        ("ratings.dat", "1::1::5\n1::-2::4\n", 2, "item", "-2"),
        ("u.data", "1\t1\t5\t100\n2\t2\t3\t7\n-3\t2\t3\t7\n", 3, "user", "-3"),
        ("ratings.csv", H_ML20M + "1,1,4.5,100\n2,-7,3.0,200\n", 3, "item", "-7"),
    ])
    def test_negative_ids(self, write, name, content, line, what, value):
        msg = load_error(write(name, content))
        assert f"{name}, line {line}" in msg and f"{what} ID {value} is negative" in msg

    @pytest.mark.parametrize("name, content, line, what", [
        ("ratings.dat", "1::1::5\n1.5::2::4\n", 2, "user"),
        ("ratings.dat", "1::1::5\n1::2.5::4\n", 2, "item"),
        ("u.data", "1\t1\t5\t100\n1\t2.25\t4\t100\n", 2, "item"),
    ])
    def test_fractional_ids(self, write, name, content, line, what):
        msg = load_error(write(name, content))
        assert f"line {line}" in msg and f"{what} ID" in msg and "integer" in msg

    @pytest.mark.parametrize("name, content, line, value", [
        ("ratings.dat", "1::1::5\nabc::2::4\n2::1::3\n", 2, "'abc'"),
        ("u.data", "1\t1\t5\t100\n1\tmovie\t4\t100\n", 2, "'movie'"),
        ("ratings.csv", H_ML20M + "1,1,4.5,100\nx,2,3.0,200\n", 3, "'x'"),
    ])
    def test_non_integer_ids_in_movielens_formats(self, write, name, content, line, value):
        msg = load_error(write(name, content))
        assert f"line {line}" in msg and value in msg and "not a non-negative integer" in msg

    def test_id_too_large_names_its_line(self, write):
        msg = load_error(write("u.data", "1\t1\t5\t100\n99999999999999999999\t2\t4\t1\n"))
        assert "line 2" in msg and "99999999999999999999" in msg and "larger than 2**64 - 1" in msg

    def test_float_id_beyond_exact_integers(self):
        with pytest.raises(DataError, match=r"entry 0: user ID 1e\+19 is a float beyond 2\*\*53"):
            Interactions.from_arrays(np.array([1e19, 2.0]), [1, 2], [1.0, 2.0])

    def test_python_int_id_beyond_uint64(self):
        with pytest.raises(DataError, match=r"entry 1: item ID 18446744073709551616 is larger than 2\*\*64 - 1"):
            Interactions.from_arrays([1, 2], np.array([1, 2**64], dtype=object), [1.0, 2.0])

    def test_string_ids_fine_in_generic_formats(self, write):
        d = lfopt.load_data(write("x.tsv", "abc 1 4\ndef 1 3\n"))
        assert d.user_ids.tolist() == ["abc", "def"]

    def test_negative_ids_in_arrays(self):
        with pytest.raises(DataError, match=r"entry 1: item ID -4 is negative"):
            Interactions.from_arrays([1, 2], [3, -4], [1.0, 2.0])

    def test_none_id_in_arrays(self):
        with pytest.raises(DataError, match=r"entry 1: user ID None"):
            Interactions.from_arrays(np.array([1, None, 2], dtype=object), [1, 2, 3], [1.0, 2.0, 3.0])

    def test_mixed_int_and_string_ids(self):
        df = pd.DataFrame({"user": [1, "a"], "item": [1, 2], "rating": [3.0, 4.0]})
        try:
            d = Interactions.from_dataframe(df)
        except DataError as exc:
            assert "user ID" in str(exc)
        else:
            assert d.n_users == 2

    def test_array_length_mismatch(self):
        with pytest.raises(DataError, match="same length, got 2, 1 and 2"):
            Interactions.from_arrays([1, 2], [1], [1.0, 2.0])

    def test_constructor_index_out_of_range(self):
        with pytest.raises(DataError, match=r"user indices must lie in \[0, 2\)"):
            Interactions([0, 2], [0, 0], [1.0, 1.0], n_users=2)

    def test_empty_arrays(self):
        with pytest.raises(DataError, match="no interactions"):
            Interactions.from_arrays([], [], [])


class TestDuplicates:
    CONTENT = "1::1::5\n1::2::4\n2::1::1\n1::1::3\n2::1::2\n"

    def test_error_names_first_duplicate(self, write):
        msg = load_error(write("ratings.dat", self.CONTENT))
        assert "ratings.dat, line 4" in msg  # the first repeat ...
        assert "first seen at" in msg and "line 1" in msg  # ... and its original
        assert "duplicate" in msg and "'mean'" in msg
        assert "pair (1, 1)" in msg.replace("np.int64(1)", "1")  # names the pair (numpy repr: another test)

    def test_mean(self, write):
        d = lfopt.load_data(write("ratings.dat", self.CONTENT), duplicates="mean")
        assert d.nnz == 3
        got = {(u, i): v for u, i, v in zip(d.user_ids[d.users].tolist(), d.item_ids[d.items].tolist(),
                                            d.values.tolist())}
        assert got == {(1, 1): 4.0, (1, 2): 4.0, (2, 1): 1.5}

    def test_last(self, write):
        d = lfopt.load_data(write("ratings.dat", self.CONTENT), duplicates="last")
        got = {(u, i): v for u, i, v in zip(d.user_ids[d.users].tolist(), d.item_ids[d.items].tolist(),
                                            d.values.tolist())}
        assert got == {(1, 1): 3.0, (1, 2): 4.0, (2, 1): 2.0}

    def test_last_keeps_its_timestamp(self):
        d = Interactions.from_arrays([1, 2, 1], [1, 2, 1], [1.0, 2.0, 5.0], timestamps=[10, 20, 5],
                                     duplicates="last")
        k = int(np.flatnonzero(d.user_ids[d.users] == 1)[0])
        assert d.values[k] == 5.0 and d.timestamps[k] == 5

    def test_arrays_error_with_string_ids(self):
        with pytest.raises(DataError, match=r"entry 2: duplicate .*'a'.*'x'.*first seen at entry 0"):
            Interactions.from_arrays(["a", "b", "a"], ["x", "y", "x"], [1, 2, 3])

    def test_unknown_policy(self, write):
        msg = load_error(write("ratings.dat", "1::1::5\n"), duplicates="first")
        assert "'first'" in msg and "duplicates" in msg


class TestColumns:
    def test_undetectable_csv_columns(self, write):
        msg = load_error(write("x.csv", "alpha,beta,gamma\n1,2,3\n"))
        assert "x.csv" in msg and "alpha" in msg and "columns=" in msg

    def test_missing_mapped_column(self, write):
        msg = load_error(write("x.csv", "U,I,S\na,b,3\n"), columns={"user": "U", "item": "Item", "rating": "S"})
        assert "'Item' not found" in msg and "['U', 'I', 'S']" in msg

    def test_unknown_mapping_key(self, write):
        msg = load_error(write("x.csv", "U,I,S\na,b,3\n"), columns={"user": "U", "item": "I", "stars": "S"})
        assert "stars" in msg

    def test_positional_column_out_of_range(self, write):
        msg = load_error(write("x.csv", "U,I,S\na,b,3\n"), columns={"user": 0, "item": 1, "rating": 7})
        assert "x.csv" in msg and "column 7" in msg

    def test_mapping_needs_user_and_item(self, write):
        msg = load_error(write("x.csv", "U,I,S\na,b,3\n"), columns={"user": "U", "rating": "S"})
        assert "'user' and 'item'" in msg


# ========================================================== model configuration
class TestModelConfig:
    @pytest.mark.parametrize("rank", [0, -3, 2.5, True])
    def test_bad_rank(self, rank):
        with pytest.raises(ConfigError, match=f"rank must be a positive integer, got {rank!r}"):
            LatentFactorModel(rank=rank)

    @pytest.mark.parametrize("name, value", [("lam", -0.1), ("lam", float("nan")), ("lam", float("inf")),
                                             ("lam_b", -1.0)])
    def test_bad_lambda(self, name, value):
        with pytest.raises(ConfigError, match=f"{name} must be a finite number >= 0"):
            LatentFactorModel(**{name: value})

    def test_zero_lambda_is_allowed(self):
        assert LatentFactorModel(lam=0.0).lam == 0.0

    def test_bad_init_scale(self):
        with pytest.raises(ConfigError, match="init_scale"):
            LatentFactorModel(init_scale=0.0)

    def test_unknown_optimizer_at_fit(self, small_split):
        with pytest.raises(ConfigError, match="unknown optimizer 'newton'.*sgd"):
            LatentFactorModel(optimizer="newton", epochs=1).fit(small_split[0])

    def test_unknown_optimizer_option(self, small_split):
        with pytest.raises(ConfigError, match="does not take option"):
            LatentFactorModel(optimizer="als", epochs=1, momentum=0.9).fit(small_split[0])

    def test_bad_epochs(self, small_split):
        with pytest.raises(ConfigError, match="epochs"):
            LatentFactorModel(optimizer="als", epochs=0).fit(small_split[0])

    def test_fit_needs_interactions(self):
        with pytest.raises(DataError, match="Interactions"):
            LatentFactorModel(epochs=1).fit(np.ones((3, 3)))

    def test_unfitted_model(self):
        with pytest.raises(ConfigError, match="not fitted"):
            LatentFactorModel().predict([1], [1])


# ========================================================= prediction fallback
class TestUnknownAtPrediction:
    def test_bias_only_fallback_and_count(self, fitted_model):
        m = fitted_model
        bu, bi, _, _ = m.factors()
        u_known, i_known = m.user_ids_[np.argmax(m.user_counts_)], m.item_ids_[np.argmax(m.item_counts_)]
        u_idx = int(np.argmax(m.user_counts_))
        i_idx = int(np.argmax(m.item_counts_))
        with pytest.warns(UserWarning, match="2 of 3 pairs"):
            pred = m.predict([u_known, 10**9, 10**9], [i_known, i_known, 10**9], clip=False)
        assert m.n_unknown_ == 2
        assert pred[1] == pytest.approx(m.mu_ + bi[i_idx], rel=1e-5)  # unknown user: mean + item bias
        assert pred[2] == pytest.approx(m.mu_, rel=1e-6)  # both unknown: the mean
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = m.predict([u_known], [i_known], clip=False)
            user_only = m.predict([u_known], [10**9], clip=False)
        assert user_only[0] == pytest.approx(m.mu_ + bu[u_idx], rel=1e-5)
        assert full[0] != pytest.approx(user_only[0])  # the factors are used when both are known

    def test_known_pairs_no_warning(self, fitted_model):
        m = fitted_model
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pred = m.predict(m.user_ids_[:5], m.item_ids_[:5])
        assert m.n_unknown_ == 0 and np.isfinite(pred).all()
        lo, hi = m.rating_range_
        assert (pred >= lo).all() and (pred <= hi).all()

    def test_string_ids_unknown(self, string_id_model):
        with pytest.warns(UserWarning):
            string_id_model.predict(["user-0", "stranger"], ["item-0", "item-0"])
        assert string_id_model.n_unknown_ == 1

    def test_predict_length_mismatch(self, fitted_model):
        with pytest.raises(DataError, match="same length"):
            fitted_model.predict([1, 2], [1])

    def test_evaluate_counts_unseen(self, fitted_model, small_synthetic):
        other = Interactions.from_arrays([10**6, 0], [0, 10**6], [3.0, 4.0])
        scores = fitted_model.evaluate(other)
        assert scores["n"] == 2 and scores["n_unseen"] == 2
        with pytest.raises(DataError, match="unseen"):  # nothing left to score: an error, not RMSE nan
            fitted_model.evaluate(other, unseen="drop")
        u, i = fitted_model.user_ids_[0], fitted_model.item_ids_[0]
        mixed = Interactions.from_arrays([10**6, 0, u], [0, 10**6, i], [3.0, 4.0, 5.0])
        dropped = fitted_model.evaluate(mixed, unseen="drop")
        assert dropped["n_dropped"] == 2 and dropped["n"] == 1  # each pair counted once: n + n_dropped = 3

    def test_recommend_unknown_user_and_bad_k(self, fitted_model):
        items, scores = fitted_model.recommend(10**9, k=4)
        assert len(items) == 4 and (np.diff(scores) <= 0).all()
        _, bi, _, _ = fitted_model.factors()
        best = fitted_model.item_ids_[np.argmax(np.where(fitted_model.item_counts_ > 0, bi, -np.inf))]
        assert items[0] == best  # popularity (item bias) fallback
        with pytest.raises(ConfigError, match="k must be a positive integer"):
            fitted_model.recommend(fitted_model.user_ids_[0], k=0)
