"""The data layer: Interactions, file loaders on real data, splits, synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import lfopt
from lfopt import Interactions
from lfopt.data.io import detect_format

YELP, AMAZON, LASTFM = "yelp/user_business.dat", "amazon/user_item.dat", "lastfm/user_artist.dat"


def pair_keys(data: Interactions) -> np.ndarray:
    """One int64 key per entry, (user, item) in the data's index space."""
    return data.users.astype(np.int64) * data.n_items + data.items


def original_triples(data: Interactions) -> set:
    return set(zip(data.user_ids[data.users].tolist(), data.item_ids[data.items].tolist(), data.values.tolist()))


# =============================================================== Interactions
class TestBuilders:
    def test_from_arrays_integer_ids(self):
        d = Interactions.from_arrays([10, 30, 10, 20], [7, 7, 5, 9], [4.0, 3.0, 5.0, 1.5])
        assert d.shape == (3, 3) and d.nnz == 4 and len(d) == 4
        assert d.user_ids.tolist() == [10, 20, 30]
        assert d.item_ids.tolist() == [5, 7, 9]
        assert original_triples(d) == {(10, 7, 4.0), (30, 7, 3.0), (10, 5, 5.0), (20, 9, 1.5)}
        assert d.density == pytest.approx(4 / 9)

    def test_from_arrays_string_ids(self):
        d = Interactions.from_arrays(["ann", "ann", "bob"], ["x", "y", "x"], [4.0, 3.0, 5.0])
        assert d.shape == (2, 2)
        assert d.user_ids.tolist() == ["ann", "bob"]
        assert original_triples(d) == {("ann", "x", 4.0), ("ann", "y", 3.0), ("bob", "x", 5.0)}

    def test_from_arrays_implicit_default_values_are_one(self):
        d = Interactions.from_arrays([1, 2, 3], [1, 1, 2])
        assert d.values.dtype == np.float32
        assert d.values.tolist() == [1.0, 1.0, 1.0]

    def test_from_arrays_keeps_timestamps_aligned(self):
        d = Interactions.from_arrays([5, 1, 3], [2, 2, 9], [1.0, 2.0, 3.0], timestamps=[500, 100, 300])
        assert d.timestamps.dtype == np.int32  # compact when they fit
        big = Interactions.from_arrays([1, 2], [1, 1], [1.0, 2.0], timestamps=[0, 2**40])
        assert big.timestamps.dtype == np.int64 and big.timestamps.tolist() == [0, 2**40]
        by_user = dict(zip(d.user_ids[d.users].tolist(), d.timestamps.tolist()))
        assert by_user == {5: 500, 1: 100, 3: 300}

    def test_from_dataframe_configurable_columns(self):
        df = pd.DataFrame({"who": ["a", "b", "a"], "what": [100, 100, 200], "stars": [1.0, 2.0, 3.0],
                           "when": [30, 10, 20], "junk": ["p", "q", "r"]})
        d = Interactions.from_dataframe(df, user_col="who", item_col="what", rating_col="stars", time_col="when")
        assert d.shape == (2, 2)
        assert original_triples(d) == {("a", 100, 1.0), ("b", 100, 2.0), ("a", 200, 3.0)}
        assert sorted(d.timestamps.tolist()) == [10, 20, 30]

    def test_from_dataframe_default_column_names_and_implicit(self):
        df = pd.DataFrame({"user": [1, 2], "item": [3, 4], "rating": [5.0, 2.0]})
        assert Interactions.from_dataframe(df).values.tolist() == [5.0, 2.0]
        assert Interactions.from_dataframe(df, rating_col=None).values.tolist() == [1.0, 1.0]

    def test_from_dataframe_missing_column_is_named(self):
        df = pd.DataFrame({"user": [1], "item": [2], "rating": [3.0]})
        with pytest.raises(lfopt.DataError, match="'score'.*not found"):
            Interactions.from_dataframe(df, rating_col="score")

    def test_from_scipy_matches_matrix(self):
        dense = np.array([[0, 1.5, 0, 0], [2.0, 0, 0, 3.0], [0, 0, 0, 0]])
        d = Interactions.from_scipy(sp.csr_matrix(dense))
        assert d.shape == (3, 4)  # the empty last row keeps its place
        assert d.nnz == 3
        np.testing.assert_array_equal(d.to_scipy().toarray(), dense)

    def test_from_scipy_drops_explicit_zeros_unless_asked(self):
        m = sp.coo_matrix(([1.0, 0.0, 2.0], ([0, 1, 1], [0, 0, 1])), shape=(2, 2))
        assert Interactions.from_scipy(m).nnz == 2
        kept = Interactions.from_scipy(m, keep_zeros=True)
        assert kept.nnz == 3 and 0.0 in kept.values.tolist()

    def test_from_scipy_sums_repeated_coo_coordinates(self):
        m = sp.coo_matrix(([1.0, 2.0, 3.0], ([0, 0, 1], [1, 1, 2])), shape=(3, 4))
        d = Interactions.from_scipy(m)
        assert d.nnz == 2
        assert d.to_scipy().toarray()[0, 1] == 3.0

    def test_from_scipy_rejects_dense(self):
        with pytest.raises(lfopt.DataError, match="scipy.sparse"):
            Interactions.from_scipy(np.eye(3))

    def test_dtypes(self, small_synthetic):
        for d in (small_synthetic, Interactions.from_arrays(["a", "b"], [1, 2], [1, 2]),
                  Interactions.from_scipy(sp.eye(3, format="csr"))):
            assert d.users.dtype == np.int32
            assert d.items.dtype == np.int32
            assert d.values.dtype == np.float32


class TestIdMaps:
    def test_integer_id_round_trip(self):
        d = Interactions.from_arrays([10, 30, 20], [7, 8, 9], [1.0, 2.0, 3.0])
        idx = d.user_index([30, 10, 20])
        assert d.user_ids[idx].tolist() == [30, 10, 20]
        assert d.item_ids[d.item_index([9, 7])].tolist() == [9, 7]

    def test_string_id_round_trip(self, string_id_data):
        d = string_id_data
        ids = d.user_ids[[5, 0, 17]]
        np.testing.assert_array_equal(d.user_index(ids), [5, 0, 17])
        np.testing.assert_array_equal(d.item_ids[d.item_index(d.item_ids[::7])], d.item_ids[::7])

    def test_unknown_ids_are_minus_one(self):
        d = Interactions.from_arrays(["a", "b"], [1, 2], [1.0, 2.0])
        assert d.user_index(["b", "zed", "a"]).tolist() == [1, -1, 0]
        assert d.item_index([2, 99]).tolist() == [1, -1]
        assert d.user_index("a").tolist() == [0]  # a scalar is accepted

    def test_every_index_maps_back(self, ml100k):
        np.testing.assert_array_equal(ml100k.user_index(ml100k.user_ids), np.arange(ml100k.n_users))
        np.testing.assert_array_equal(ml100k.item_index(ml100k.item_ids), np.arange(ml100k.n_items))


class TestViews:
    @pytest.fixture(scope="class")
    @classmethod
    def data(cls):
        rng = np.random.default_rng(5)
        keys = rng.choice(40 * 30, size=300, replace=False)
        users, items = keys // 30, keys % 30
        return Interactions(users, items, rng.normal(3, 1, 300), n_users=41, n_items=31)  # empty last row/col

    def test_csr_matches_scipy(self, data):
        ref = sp.csr_matrix((data.values, (data.users, data.items)), shape=data.shape)
        ref.sort_indices()
        v = data.csr
        np.testing.assert_array_equal(v.indptr, ref.indptr)
        np.testing.assert_array_equal(v.indices, ref.indices)
        np.testing.assert_array_equal(v.data, ref.data)
        assert v.indptr.dtype == np.int64 and v.indices.dtype == np.int32 and v.data.dtype == np.float32

    def test_csc_matches_scipy(self, data):
        ref = sp.csc_matrix((data.values, (data.users, data.items)), shape=data.shape)
        ref.sort_indices()
        v = data.csc
        assert len(v.indptr) == data.n_items + 1
        np.testing.assert_array_equal(v.indptr, ref.indptr)
        np.testing.assert_array_equal(v.indices, ref.indices)
        np.testing.assert_array_equal(v.data, ref.data)

    def test_order_maps_view_to_entries(self, data):
        np.testing.assert_array_equal(data.items[data.csr.order], data.csr.indices)
        np.testing.assert_array_equal(data.values[data.csr.order], data.csr.data)
        np.testing.assert_array_equal(data.users[data.csc.order], data.csc.indices)
        assert sorted(data.csr.order.tolist()) == list(range(data.nnz))

    def test_counts_and_to_scipy(self, data):
        np.testing.assert_array_equal(data.user_counts(), np.diff(data.csr.indptr))
        np.testing.assert_array_equal(data.item_counts(), np.diff(data.csc.indptr))
        assert data.to_scipy("csc").format == "csc"
        assert data.to_scipy().shape == (41, 31)


class TestSubset:
    def test_subset_keeps_index_space(self, ml100k):
        mask = ml100k.values >= 5
        sub = ml100k.subset(mask)
        assert sub.shape == ml100k.shape
        assert sub.user_ids is ml100k.user_ids and sub.item_ids is ml100k.item_ids
        assert sub.nnz == int(mask.sum())
        assert (sub.values == 5).all()
        np.testing.assert_array_equal(sub.timestamps, ml100k.timestamps[mask])

    def test_subset_by_positions(self):
        d = Interactions.from_arrays([1, 2, 3], [1, 2, 3], [1.0, 2.0, 3.0])
        sub = d.subset([2, 0], name="part")
        assert sub.name == "part" and sub.shape == (3, 3)
        assert sub.values.tolist() == [3.0, 1.0]
        assert sub.user_counts().tolist() == [1, 0, 1]

    def test_with_values(self, small_synthetic):
        ones = small_synthetic.with_values(1.0)
        assert (ones.values == 1).all() and ones.nnz == small_synthetic.nnz
        assert small_synthetic.values.std() > 0  # the original is untouched


# ==================================================================== loaders
class TestRealDatasets:
    def test_ml100k(self, ml100k):
        assert (ml100k.nnz, ml100k.n_users, ml100k.n_items) == (100_000, 943, 1682)
        assert ml100k.timestamps is not None and ml100k.timestamps.shape == (100_000,)
        assert ml100k.timestamps.min() > 800_000_000  # 1997-98, seconds since the epoch
        assert set(np.unique(ml100k.values).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
        assert ml100k.user_ids.min() == 1 and ml100k.user_ids.max() == 943
        # first line of u.data: 196 242 3 881250949
        k = np.flatnonzero((ml100k.user_ids[ml100k.users] == 196) & (ml100k.item_ids[ml100k.items] == 242))
        assert len(k) == 1 and ml100k.values[k[0]] == 3.0 and ml100k.timestamps[k[0]] == 881250949

    def test_ml1m_three_fields(self, ml1m_path):
        d = lfopt.load_data(ml1m_path)  # no timing assertion: machines are noisy
        assert (d.nnz, d.n_users, d.n_items) == (1_000_209, 6040, 3706)
        assert d.timestamps is None
        assert d.users.dtype == np.int32 and d.values.dtype == np.float32
        assert d.values.min() == 1 and d.values.max() == 5
        assert d.user_counts().min() >= 20  # every ML-1M user rated at least 20 movies

    def test_douban_fixed_split(self, douban):
        assert douban.shape == (3000, 3000)
        assert douban.nnz == 136_891
        train, test = lfopt.fixed_split(douban)
        assert (train.nnz, test.nnz) == (123_202, 13_689)
        assert train.shape == test.shape == (3000, 3000)
        assert not np.intersect1d(pair_keys(train), pair_keys(test)).size
        assert set(np.unique(douban.values).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}

    def test_douban_loads_with_explicit_format(self, douban_path):
        d = lfopt.load_data(douban_path, format="monti")
        assert "test_mask" in d.meta and int(d.meta["test_mask"].sum()) == 13_689

    @pytest.mark.parametrize("relpath, expected, has_time", [
        (YELP, (198_397, 16_239, 14_284), False),
        (AMAZON, (195_791, 6_170, 2_753), True),
        (LASTFM, (92_834, 1_892, 17_632), False),
    ])
    def test_tab_separated(self, shared_dataset, relpath, expected, has_time):
        d = lfopt.load_data(shared_dataset(relpath))
        assert (d.nnz, d.n_users, d.n_items) == expected
        assert (d.timestamps is not None) == has_time

    def test_amazon_ids_are_zero_based_yelp_one_based(self, shared_dataset):
        assert lfopt.load_data(shared_dataset(AMAZON)).user_ids.min() == 0
        assert lfopt.load_data(shared_dataset(YELP)).user_ids.min() == 1

    def test_implicit_flag(self, shared_dataset):
        d = lfopt.load_data(shared_dataset(LASTFM), implicit=True)
        assert (d.values == 1).all() and d.nnz == 92_834


class TestTextFormats:
    def test_ml1m_with_timestamps(self, write):
        p = write("ml/ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
        d = lfopt.load_data(p)
        assert d.shape == (2, 2)
        assert original_triples(d) == {(1, 1193, 5.0), (1, 661, 3.0), (2, 1193, 4.0)}
        assert sorted(d.timestamps.tolist()) == [978298413, 978300760, 978302109]

    def test_ml1m_windows_line_endings(self, write):
        d = lfopt.load_data(write("ratings.dat", "1::10::5::7\r\n2::10::3::8\r\n"))
        assert d.values.tolist() == [5.0, 3.0] and d.timestamps.tolist() == [7, 8]

    def test_ml20m_csv(self, write):
        p = write("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n"
                                 "7,2,4.0,1094785740\n")
        d = lfopt.load_data(p)
        assert detect_format(p) == "ml-20m"
        assert original_triples(d) == {(1, 2, 3.5), (1, 29, 3.5), (7, 2, 4.0)}
        assert d.timestamps is not None and sorted(d.timestamps.tolist())[0] == 1094785740

    def test_generic_csv_header_guess(self, write):
        d = lfopt.load_data(write("x.csv", "user_id,item_id,score\nu1,i1,2\nu2,i1,4\n"))
        assert original_triples(d) == {("u1", "i1", 2.0), ("u2", "i1", 4.0)}

    def test_generic_csv_column_mapping(self, write):
        p = write("log.csv", "stars,buyer,product,when\n4,b1,p9,100\n2,b2,p9,200\n5,b1,p3,300\n")
        d = lfopt.load_data(p, columns={"user": "buyer", "item": "product", "rating": "stars", "timestamp": "when"})
        assert original_triples(d) == {("b1", "p9", 4.0), ("b2", "p9", 2.0), ("b1", "p3", 5.0)}
        assert sorted(d.timestamps.tolist()) == [100, 200, 300]

    def test_csv_mapping_by_position(self, write):
        p = write("log.csv", "a,b,c\n1,2,3\n4,5,6\n")
        d = lfopt.load_data(p, columns={"user": 2, "item": 0, "rating": 1})
        assert original_triples(d) == {(3, 1, 2.0), (6, 4, 5.0)}

    def test_tsv_string_ids_and_two_fields(self, write):
        d = lfopt.load_data(write("clicks.tsv", "alice book\nbob book\nalice pen\n"))
        assert d.user_ids.tolist() == ["alice", "bob"] and (d.values == 1).all()

    def test_trailing_blank_lines_are_ignored(self, write):
        d = lfopt.load_data(write("ratings.dat", "1::1::5\n2::1::3\n\n\n"))
        assert d.nnz == 2

    def test_parquet_with_mapping(self, tmp_path):
        pytest.importorskip("pyarrow")
        df = pd.DataFrame({"who": ["a", "b", "c", "a"], "what": [10, 20, 10, 30], "stars": [1.0, 2.5, 4.0, 5.0],
                           "when": [5, 6, 7, 8]})
        path = tmp_path / "x.parquet"
        df.to_parquet(path)
        d = lfopt.load_data(path, columns={"user": "who", "item": "what", "rating": "stars", "timestamp": "when"})
        assert original_triples(d) == {("a", 10, 1.0), ("b", 20, 2.5), ("c", 10, 4.0), ("a", 30, 5.0)}
        assert sorted(d.timestamps.tolist()) == [5, 6, 7, 8]

    def test_parquet_without_mapping_guesses_columns(self, tmp_path):
        pytest.importorskip("pyarrow")
        path = tmp_path / "y.parquet"
        pd.DataFrame({"user": [1, 2], "item": [3, 3], "rating": [4.0, 5.0]}).to_parquet(path)
        assert lfopt.load_data(path).values.tolist() == [4.0, 5.0]

    @pytest.mark.parametrize("name, fmt", [
        ("u.data", "ml-100k"), ("ratings.dat", "ml-1m"), ("ratings.csv", "ml-20m"), ("a.mat", "mat"),
        ("a.parquet", "parquet"), ("a.csv", "csv"), ("a.tsv", "tsv"), ("user_item.dat", "tsv"),
    ])
    def test_detect_format(self, name, fmt):
        assert detect_format(name) == fmt


# ============================================================ MATLAB files
def _savemat(path, **variables):
    import scipy.io

    scipy.io.savemat(path, variables)
    return path


def _ciao_table(n=300, seed=0, n_cols=5):
    """Rows (user, item, category, rating, helpfulness): the layout of Ciao/Epinions rating.mat dumps."""
    rng = np.random.default_rng(seed)
    t = np.c_[rng.integers(1, 40, n), rng.integers(1, 60, n), rng.integers(1, 28, n), rng.integers(1, 6, n),
              rng.integers(0, 6, n)].astype(np.float64)
    _, first = np.unique(t[:, :2], axis=0, return_index=True)
    return t[np.sort(first)][:, :n_cols]


class TestMatFiles:
    def test_header_tells_v5_from_v73(self, tmp_path, douban_path):
        from lfopt.data.io import mat_version

        assert mat_version(_savemat(tmp_path / "a.mat", x=np.ones((2, 2)))) == "5"
        assert mat_version(douban_path) == "7.3"
        (tmp_path / "b.mat").write_bytes(b"hello")
        assert mat_version(tmp_path / "b.mat") == "unknown"

    def test_v5_table_with_column_mapping(self, tmp_path):
        t = _ciao_table()
        path = _savemat(tmp_path / "rating.mat", rating=t)
        d = lfopt.load_data(path, columns={"user": 0, "item": 1, "rating": 3})
        assert d.nnz == len(t)
        assert original_triples(d) == set(zip(t[:, 0].astype(int).tolist(), t[:, 1].astype(int).tolist(),
                                              t[:, 3].tolist()))

    def test_v5_variable_named_in_columns_for_the_cli(self, tmp_path):
        t = _ciao_table()
        path = _savemat(tmp_path / "dump.mat", rating=t, trust=np.ones((10, 2)))
        d = lfopt.load_data(path, columns={"variable": "rating", "user": 0, "item": 1, "rating": 3})
        assert d.nnz == len(t)
        d2 = lfopt.load_data(path, variable="rating", columns={"user": 0, "item": 1, "rating": 3})
        np.testing.assert_array_equal(d.values, d2.values)

    def test_v5_three_column_table_needs_no_mapping(self, tmp_path):
        t = _ciao_table()[:, [0, 1, 3]]
        d = lfopt.load_data(_savemat(tmp_path / "r.mat", ratings=t))
        assert d.nnz == len(t) and sorted(d.values.tolist()) == sorted(t[:, 2].tolist())

    def test_v5_four_columns_with_a_real_timestamp(self, tmp_path):
        t = _ciao_table()[:, [0, 1, 3]]
        ts = 1_300_000_000 + np.arange(len(t)) * 60.0
        d = lfopt.load_data(_savemat(tmp_path / "r.mat", ratings=np.c_[t, ts]))
        assert d.timestamps is not None and d.timestamps.min() == 1_300_000_000

    def test_v5_sparse_rating_matrix(self, tmp_path):
        R = sp.random(30, 50, density=0.2, random_state=2, format="csc")
        R.data = np.ceil(R.data * 5)
        d = lfopt.load_data(_savemat(tmp_path / "R.mat", R=R, names=np.array(["a", "b"])))
        assert d.shape == (30, 50) and d.nnz == R.nnz
        np.testing.assert_array_equal(d.to_scipy().toarray(), R.toarray())

    def test_v5_dense_rating_matrix(self, tmp_path):
        dense = np.zeros((20, 30))
        dense[3, 4], dense[0, 29], dense[19, 0] = 4.0, 1.0, 5.0
        dense[5, 5] = np.nan  # missing too
        d = lfopt.load_data(_savemat(tmp_path / "R.mat", R=dense))
        assert d.shape == (20, 30) and d.nnz == 3
        np.testing.assert_array_equal(d.to_scipy().toarray(), np.nan_to_num(dense))

    def test_v5_monti_layout(self, tmp_path):
        M = np.zeros((6, 5))
        M[0, 0], M[1, 2], M[5, 4], M[3, 3] = 5, 3, 1, 2
        train = (M != 0) * 1.0
        train[3, 3] = 0
        test = (M != 0) - train
        d = lfopt.load_data(_savemat(tmp_path / "monti.mat", M=M, Otraining=train, Otest=test))
        tr, te = lfopt.fixed_split(d)
        assert (tr.nnz, te.nnz) == (3, 1) and te.values.tolist() == [2.0]

    def test_v73_table_and_sparse_matrix(self, tmp_path):
        h5py = pytest.importorskip("h5py")
        t = _ciao_table()[:, [0, 1, 3]]
        with h5py.File(tmp_path / "t.mat", "w") as f:
            f["ratings"] = t.T  # MATLAB stores column-major
        d = lfopt.load_data(tmp_path / "t.mat")
        assert d.nnz == len(t) and sorted(d.values.tolist()) == sorted(t[:, 2].tolist())
        R = sp.random(8, 6, density=0.4, random_state=0, format="csc")
        with h5py.File(tmp_path / "s.mat", "w") as f:
            g = f.create_group("R")
            g.attrs["MATLAB_sparse"] = 8
            g["data"], g["ir"], g["jc"] = R.data, R.indices, R.indptr
        d = lfopt.load_data(tmp_path / "s.mat")
        np.testing.assert_allclose(d.to_scipy().toarray(), R.toarray(), rtol=1e-6)

    def test_douban_still_loads_as_before(self, douban):
        assert douban.meta["n_in_both_masks"] == 0 and douban.nnz == 136_891


class TestIdValues:
    def test_ids_beyond_int64_keep_their_value(self, write):
        big = [2**63, 2**63 + 5, 2**64 - 1]
        d = lfopt.load_data(write("big.tsv", "".join(f"{u} {k} 4\n" for k, u in enumerate(big)) + "5 9 3\n"))
        assert d.user_ids.dtype == np.uint64
        assert sorted(int(u) for u in d.user_ids) == [5] + big  # never wrapped to negative numbers
        for fmt_name, sep in (("ratings.dat", "::"), ("u.data", "\t")):
            text = "".join(f"{u}{sep}1{sep}4{sep}978300760\n" for u in big)
            e = lfopt.load_data(write(fmt_name, text))
            assert sorted(int(u) for u in e.user_ids) == big

    def test_big_ids_through_a_model_and_its_file(self, write, tmp_path):
        rng = np.random.default_rng(0)
        users = [2**63 + int(k) for k in rng.integers(0, 30, 600)]
        lines = "".join(f"{u}\t{i}\t{r}\n" for u, i, r in zip(users, rng.integers(0, 20, 600), rng.integers(1, 6, 600)))
        d = lfopt.load_data(write("big.tsv", lines), duplicates="last")
        model = lfopt.LatentFactorModel(rank=2, epochs=2, validation=None).fit(d)
        loaded = lfopt.load(model.save(tmp_path / "m.npz"))
        uid = int(d.user_ids[0])
        assert uid >= 2**63 and loaded.user_ids_.dtype == np.uint64
        items, _ = loaded.recommend(uid, k=3)
        assert len(items) == 3
        np.testing.assert_allclose(loaded.predict([uid], [int(d.item_ids[0])]),
                                   model.predict([uid], [int(d.item_ids[0])]))

    def test_ids_from_arrays(self):
        d = Interactions.from_arrays(np.array([2**64 - 1, 3], dtype=np.uint64), [1, 2], [1.0, 2.0])
        assert d.user_ids.tolist() == [3, 2**64 - 1]
        d = Interactions.from_arrays(np.array([2**63 + 1, 3], dtype=object), [1, 2], [1.0, 2.0])
        assert d.user_ids.tolist() == [3, 2**63 + 1]

    def test_string_ids_stay_as_written(self, write):
        d = lfopt.load_data(write("s.tsv", "007 a1 4\n7 a1 3\nu-1 0042 5\n18446744073709551616 b 1\n"))
        assert sorted(d.user_ids.tolist()) == sorted(["007", "7", "u-1", "18446744073709551616"])
        assert sorted(d.item_ids.tolist()) == ["0042", "a1", "b"]
        c = lfopt.load_data(write("s.csv", "user,item,rating\n007,1,4\n7,1,3\n"))
        assert sorted(c.user_ids.tolist()) == ["007", "7"]

    def test_plain_integers_stay_integers(self, write):
        d = lfopt.load_data(write("p.tsv", "10 1 4\n0 1 3\n7 2 0.5\n"))  # "0.5" and "0" are no leading zeros
        assert d.user_ids.dtype.kind == "i" and d.user_ids.tolist() == [0, 7, 10]


class TestTimestampRule:
    @pytest.mark.parametrize("times", [
        [881250949, 891250949, 875000000],  # MovieLens-like seconds
        [1386201600000, 1059004800000, 1100000000000],  # milliseconds
        [0, 5, 100_000_000],  # starts at the epoch, the latest after 1973
    ])
    def test_plausible_timestamps_load(self, write, times):
        text = "".join(f"{u} {u + 1} 4 {t}\n" for u, t in enumerate(times))
        d = lfopt.load_data(write("t.tsv", text))
        assert sorted(d.timestamps.tolist()) == sorted(times)

    def test_columns_override_the_rule(self, write):
        path = write("cat.tsv", "1 1 7 4\n1 2 3 5\n2 1 12 1\n")  # user item category rating
        d = lfopt.load_data(path, columns={"user": 0, "item": 1, "rating": 3})
        assert sorted(d.values.tolist()) == [1.0, 4.0, 5.0] and d.timestamps is None
        d = lfopt.load_data(path, columns={"user": 0, "item": 1, "rating": 2, "timestamp": 3})
        assert sorted(d.timestamps.tolist()) == [1, 4, 5]  # the user said so: no rule


# ===================================================================== splits
class TestRandomSplits:
    def test_random_split_sizes_disjoint_complete(self, ml100k):
        train, test = lfopt.random_split(ml100k, 0.2, seed=7)
        assert (train.nnz, test.nnz) == (80_000, 20_000)
        assert train.shape == test.shape == ml100k.shape
        kt, ks = pair_keys(train), pair_keys(test)
        assert not np.intersect1d(kt, ks).size
        np.testing.assert_array_equal(np.sort(np.concatenate([kt, ks])), np.sort(pair_keys(ml100k)))

    def test_random_split_deterministic_by_seed(self, small_synthetic):
        a = lfopt.random_split(small_synthetic, 0.1, seed=11)[1]
        b = lfopt.random_split(small_synthetic, 0.1, seed=11)[1]
        c = lfopt.random_split(small_synthetic, 0.1, seed=12)[1]
        np.testing.assert_array_equal(pair_keys(a), pair_keys(b))
        assert not np.array_equal(pair_keys(a), pair_keys(c))

    def test_random_split_bad_fraction(self, small_synthetic):
        for bad in (0.0, 1.0, -0.1, 1.5):
            with pytest.raises(lfopt.ConfigError, match="test_fraction"):
                lfopt.random_split(small_synthetic, bad)

    def test_train_valid_test(self, small_synthetic):
        n = small_synthetic.nnz
        train, valid, test = lfopt.train_valid_test_split(small_synthetic, 0.1, 0.2, seed=3)
        assert (valid.nnz, test.nnz, train.nnz) == (round(0.1 * n), round(0.2 * n), n - round(0.1 * n) - round(0.2 * n))
        keys = [pair_keys(p) for p in (train, valid, test)]
        allk = np.concatenate(keys)
        assert len(np.unique(allk)) == n  # pairwise disjoint and complete
        with pytest.raises(lfopt.ConfigError):
            lfopt.train_valid_test_split(small_synthetic, 0.5, 0.5)

    def test_kfold_partitions_entries(self, small_synthetic):
        folds = list(lfopt.kfold(small_synthetic, k=4, seed=1))
        assert len(folds) == 4
        tests = [pair_keys(te) for _, te in folds]
        allk = np.sort(np.concatenate(tests))
        np.testing.assert_array_equal(allk, np.sort(pair_keys(small_synthetic)))
        for tr, te in folds:
            assert tr.nnz + te.nnz == small_synthetic.nnz
            assert not np.intersect1d(pair_keys(tr), pair_keys(te)).size
            assert abs(te.nnz - small_synthetic.nnz / 4) <= 1
        with pytest.raises(lfopt.ConfigError):
            list(lfopt.kfold(small_synthetic, k=1))


class TestPerUserSplit:
    @staticmethod
    def _last_and_first(early, late, n_users):
        """Per user: the latest timestamp in ``early`` and the earliest in ``late``."""
        last = np.full(n_users, np.iinfo(np.int64).min)
        np.maximum.at(last, early.users, early.timestamps)
        first = np.full(n_users, np.iinfo(np.int64).max)
        np.minimum.at(first, late.users, late.timestamps)
        return last, first

    def test_by_time_uses_timestamps(self, ml100k):
        train, valid, test = lfopt.per_user_split(ml100k, (0.6, 0.2, 0.2))
        assert train.nnz + valid.nnz + test.nnz == ml100k.nnz
        assert train.nnz > valid.nnz > 0 and test.nnz > 0
        # every train entry of a user is no later than every valid entry, and valid no later than test
        for early, late in ((train, valid), (valid, test), (train, test)):
            last, first = self._last_and_first(early, late, ml100k.n_users)
            assert (last <= first).all()
        # ties aside, train is strictly earlier: time order really is used, not a random order
        last, first = self._last_and_first(train, test, ml100k.n_users)
        assert (last < first).mean() > 0.9

    def test_fractions_per_user(self, ml100k):
        train, test = lfopt.per_user_split(ml100k, (0.8, 0.2))
        n_u = ml100k.user_counts()
        np.testing.assert_array_equal(train.user_counts(), np.maximum(np.rint(0.8 * n_u), 1))
        assert (train.user_counts() >= 1).all()

    def test_random_when_no_timestamps(self, small_synthetic):
        assert small_synthetic.timestamps is None
        a = lfopt.per_user_split(small_synthetic, (0.5, 0.5), seed=1)
        b = lfopt.per_user_split(small_synthetic, (0.5, 0.5), seed=1)
        c = lfopt.per_user_split(small_synthetic, (0.5, 0.5), seed=2)
        np.testing.assert_array_equal(pair_keys(a[1]), pair_keys(b[1]))
        assert not np.array_equal(pair_keys(a[1]), pair_keys(c[1]))
        assert a[0].nnz + a[1].nnz == small_synthetic.nnz
        assert (a[0].user_counts() >= 1).all()

    def test_by_time_needs_timestamps(self, small_synthetic):
        with pytest.raises(lfopt.DataError, match="timestamps"):
            lfopt.per_user_split(small_synthetic, by_time=True)

    def test_bad_fractions(self, small_synthetic):
        for bad in ((1.0,), (0.5, 0.4), (0.7, -0.1, 0.4)):
            with pytest.raises(lfopt.ConfigError, match="fractions"):
                lfopt.per_user_split(small_synthetic, bad)


class TestKCore:
    @pytest.mark.parametrize("k", [5, 20])
    def test_k_core_property(self, ml100k, k):
        core = lfopt.k_core(ml100k, k)
        assert core.user_counts().min() >= k
        assert core.item_counts().min() >= k
        assert 0 < core.nnz < ml100k.nnz
        # compact re-indexing with the original IDs preserved, and entries are a subset of the original
        assert core.n_users == len(np.unique(core.users)) and core.n_items == len(np.unique(core.items))
        assert original_triples(core) <= original_triples(ml100k)
        assert core.timestamps is not None and len(core.timestamps) == core.nnz

    def test_k_core_is_maximal(self, ml100k):
        """Every original entry whose user and item both survive is kept (nothing removed needlessly)."""
        core = lfopt.k_core(ml100k, 10)
        keep = np.isin(ml100k.user_ids[ml100k.users], core.user_ids) & np.isin(ml100k.item_ids[ml100k.items],
                                                                                core.item_ids)
        assert core.nnz == int(keep.sum())

    def test_k_core_needs_iteration(self):
        # user 3 has 2 entries but one is on item 30 which only user 3 rated; removing item 30 drops user 3
        users = [1, 1, 2, 2, 3, 3]
        items = [10, 20, 10, 20, 10, 30]
        core = lfopt.k_core(Interactions.from_arrays(users, items), 2)
        assert core.user_ids.tolist() == [1, 2] and core.item_ids.tolist() == [10, 20]

    def test_k_core_errors(self, small_synthetic):
        with pytest.raises(lfopt.ConfigError):
            lfopt.k_core(small_synthetic, 0)
        with pytest.raises(lfopt.DataError):
            lfopt.k_core(small_synthetic, 10_000)


def test_fixed_split_needs_a_fixed_split(small_synthetic):
    with pytest.raises(lfopt.DataError, match="no fixed split"):
        lfopt.fixed_split(small_synthetic)


# ================================================================== synthetic
class TestSynthetic:
    @pytest.fixture(scope="class")
    @classmethod
    def gen(cls):
        return lfopt.synthetic(n_users=2000, n_items=1500, nnz=60_000, seed=1, return_info=True)

    def test_shape_and_nnz(self, gen):
        data, info = gen
        assert data.shape == (2000, 1500) and data.nnz == 60_000
        assert info.clean_values.shape == (60_000,)

    def test_no_duplicate_cells(self, gen):
        data, _ = gen
        assert len(np.unique(pair_keys(data))) == data.nnz

    def test_every_user_and_item_has_an_entry(self, gen):
        data, _ = gen
        assert data.user_counts().min() >= 1 and data.item_counts().min() >= 1

    def test_long_tailed_degrees(self, gen):
        data, _ = gen
        for counts in (data.user_counts(), data.item_counts()):
            assert counts.max() >= 5 * np.median(counts)

    def test_noise_floor_in_meta(self, gen):
        data, info = gen
        assert data.meta["noise_floor"] == pytest.approx(0.5)
        assert data.meta["true_rank"] == 5
        # the measured noise around the clean values is close to the declared floor
        assert np.sqrt(np.mean((data.values - info.clean_values) ** 2)) == pytest.approx(0.5, rel=0.03)

    def test_rounded_values_and_floor(self):
        data, info = lfopt.synthetic(n_users=200, n_items=100, nnz=4000, round_to_scale=True, return_info=True)
        assert set(np.unique(data.values).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
        measured = float(np.sqrt(np.mean((data.values - info.clean_values) ** 2)))
        assert data.meta["noise_floor"] == pytest.approx(measured, rel=1e-5)

    def test_deterministic_by_seed(self):
        a = lfopt.synthetic(n_users=100, n_items=80, nnz=1500, seed=9)
        b = lfopt.synthetic(n_users=100, n_items=80, nnz=1500, seed=9)
        c = lfopt.synthetic(n_users=100, n_items=80, nnz=1500, seed=10)
        np.testing.assert_array_equal(a.values, b.values)
        assert not np.array_equal(a.values, c.values)

    def test_bad_sizes(self):
        with pytest.raises(lfopt.ConfigError, match="nnz"):
            lfopt.synthetic(n_users=100, n_items=100, nnz=10)
        with pytest.raises(lfopt.ConfigError, match="nnz"):
            lfopt.synthetic(n_users=10, n_items=10, nnz=60)
        with pytest.raises(lfopt.ConfigError):
            lfopt.synthetic(n_users=100, n_items=100, nnz=1000, rank=0)

    def test_als_reaches_noise_floor(self):
        data = lfopt.synthetic(n_users=400, n_items=300, nnz=48_000, seed=0)
        train, test = lfopt.random_split(data, 0.1, seed=0)
        model = lfopt.LatentFactorModel(rank=5, optimizer="als", epochs=15, lam=0.02, lam0=0.0, lam_b=None,
                                        lam0_b=None, seed=0).fit(train)
        rmse = model.evaluate(test)["rmse"]
        assert rmse < 1.10 * data.meta["noise_floor"]
        assert rmse > 0.9 * data.meta["noise_floor"]  # no model beats the noise by much


# ------------------------------------------------------------ dense matrices (QoS)
class TestDenseMatrixFile:
    """format="matrix": one line per user, one value per item (WS-Dream's rtMatrix.txt)."""

    def test_cells_ids_and_missing_marker(self, tmp_path):
        path = tmp_path / "rtMatrix.txt"
        path.write_text("0.5\t-1\t2.0\n\n-1\t1.5\t-1\n0\t-1\t7\n")  # a blank line is skipped
        data = lfopt.load_data(path, format="matrix", missing=-1)
        assert data.shape == (3, 3) and data.nnz == 5
        got = sorted(zip(data.users.tolist(), data.items.tolist(), data.values.tolist()))
        assert got == [(0, 0, 0.5), (0, 2, 2.0), (1, 1, 1.5), (2, 0, 0.0), (2, 2, 7.0)]  # 0 is a value here
        with pytest.warns(lfopt.data.io.DataWarning, match=r"4 cells hold -1 .* --missing -1"):
            plain = lfopt.load_data(path, format="matrix")  # default: 0 (and NaN) missing, -1 a value
        assert plain.nnz == 8

    def test_commas_empty_fields_and_nan_are_missing(self, tmp_path):
        path = tmp_path / "m.csv"
        path.write_text("1,,3\nnan,2,0\n")
        data = lfopt.load_data(path, format="matrix")
        assert sorted(data.values.tolist()) == [1.0, 2.0, 3.0] and data.shape == (2, 3)

    @pytest.mark.parametrize("text, words", [
        ("1 2 3\n1 2\n", ["m.txt, line 2: 2 values, expected 3"]),
        ("1 2 3\n\n4 x 6\n", ["m.txt, line 3, column 2: 'x' is not a number"]),
        ("user a b\n1 2 3\n", ["line 1, column 1: 'user' is not a number", "no header line"]),
        ("1 inf 3\n", ["m.txt, line 1, column 2"]),
        ("0 0\n0 nan\n", ["no observed cell"]),
        ("", ["empty file"]),
    ])
    def test_bad_files_are_named(self, tmp_path, text, words):
        path = tmp_path / "m.txt"
        path.write_text(text)
        with pytest.raises(lfopt.DataError) as info:
            lfopt.load_data(path, format="matrix")
        assert all(w in str(info.value) for w in words), str(info.value)

    def test_missing_belongs_to_matrices_and_a_wide_table_points_to_them(self, tmp_path):
        table = tmp_path / "r.tsv"
        table.write_text("1\t2\t3\n")
        with pytest.raises(lfopt.DataError, match="missing=-1.* dense matrix"):
            lfopt.load_data(table, missing=-1)
        wide = tmp_path / "wide.txt"
        wide.write_text("1 2 3 4 5 6\n6 5 4 3 2 1\n")
        with pytest.raises(lfopt.DataError, match="found 6 .*--format matrix"):
            lfopt.load_data(wide)
        with pytest.raises(lfopt.ConfigError, match="missing must be a finite number"):
            lfopt.load_data(wide, format="matrix", missing=float("nan"))

    def test_cli_trains_and_evaluates_a_qos_matrix(self, tmp_path, capsys):
        from lfopt.cli import main

        rng = np.random.default_rng(0)
        m, n = 60, 80
        M = np.exp(0.3 * rng.standard_normal((m, 1)) + 0.3 * rng.standard_normal((1, n))
                   + 0.2 * rng.standard_normal((m, n)))
        M[rng.random((m, n)) < 0.6] = -1
        path = tmp_path / "rtMatrix.txt"
        np.savetxt(path, M, fmt="%.4f", delimiter="\t")
        model = tmp_path / "qos.npz"
        assert main(["train", "--data", str(path), "--format", "matrix", "--missing", "-1", "--rank", "4",
                     "--epochs", "20", "--save", str(model), "--quiet"]) == 0
        trained = capsys.readouterr().out
        assert main(["evaluate", "--model", str(model), "--data", str(path)]) == 0  # the split is recreated
        captured = capsys.readouterr()
        assert "held-out test part" in captured.err
        rmse = trained.split("test RMSE ")[1].split()[0]
        assert captured.out.startswith(f"RMSE {rmse}")
        assert main(["train", "--data", str(path), "--missing", "-1", "--quiet"]) == 1
        assert "--format matrix" in capsys.readouterr().err
