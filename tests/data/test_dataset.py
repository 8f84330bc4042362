import numpy as np
import pytest

from edgeexit.data import DataSpec, load_csv, load_npz, load_source, load_train_test
from edgeexit.data.dataset import AAMI_CLASSES, BeatDataset, stratified_split
from edgeexit.errors import ConfigError, DataError


def test_npz_roundtrip_keeps_everything(separable, tmp_path):
    path = separable.save_npz(tmp_path / "sub" / "d.npz")
    back = load_npz(path)
    np.testing.assert_array_equal(back.x, separable.x)
    np.testing.assert_array_equal(back.y, separable.y)
    np.testing.assert_array_equal(back.groups, separable.groups)
    assert back.classes == separable.classes and back.channels == separable.channels
    assert back.signal_channels == separable.signal_channels and back.fs == separable.fs
    assert not list(tmp_path.glob("sub/.*tmp"))  # no temporary file left behind


def test_plain_npz_with_2d_windows(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, x=np.ones((4, 32), dtype=np.float64), y=np.array([0, 1, 2, 1]))
    d = load_npz(path)
    assert d.x.shape == (4, 1, 32) and d.x.dtype == np.float32
    assert d.classes == AAMI_CLASSES and d.groups is None


def test_csv_with_header_and_names(tmp_path):
    path = tmp_path / "beats.csv"
    rows = ["label,s0,s1,s2", "N,0.1,0.2,0.3", "V,1,2,3", "N,0,0,0"]
    path.write_text("\n".join(rows) + "\n")
    d = load_csv(path)
    assert d.x.shape == (3, 1, 3)
    assert d.classes == ("N", "V") and d.y.tolist() == [0, 1, 0]
    assert d.class_counts() == {"N": 2, "V": 1}


@pytest.mark.parametrize("text,msg", [("0,1,2\n1,1\n", "samples"), ("0,a,2\n0,1,x\n", "non-numeric"),
                                      ("", "no beats")])
def test_csv_errors(tmp_path, text, msg):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=msg):
        load_csv(path)


def test_validation_refuses_bad_arrays():
    x = np.zeros((4, 1, 16), dtype=np.float32)
    with pytest.raises(DataError, match="labels must lie"):
        BeatDataset(x=x, y=np.array([0, 1, 2, 7]), classes=AAMI_CLASSES)
    x_inf = x.copy()
    x_inf[2, 0, 3] = np.inf
    with pytest.raises(DataError, match="beat 2"):
        BeatDataset(x=x_inf, y=np.zeros(4, dtype=np.int64), classes=AAMI_CLASSES)
    with pytest.raises(DataError, match="channel names"):
        BeatDataset(x=x, y=np.zeros(4, dtype=np.int64), classes=AAMI_CLASSES, channels=("a", "b"))
    with pytest.raises(DataError, match="empty"):
        BeatDataset(x=x[:0], y=np.zeros(0, dtype=np.int64), classes=AAMI_CLASSES)


def test_stratified_split_keeps_every_class_on_both_sides():
    y = np.repeat(np.arange(5), [100, 10, 20, 5, 2])
    keep, held = stratified_split(y, 0.2, seed=0)
    assert np.intersect1d(keep, held).size == 0 and keep.size + held.size == y.size
    assert set(y[held]) == set(y[keep]) == set(range(5))
    again, _ = stratified_split(y, 0.2, seed=0)
    np.testing.assert_array_equal(keep, again)


def test_group_split_never_shares_a_record():
    groups = np.repeat([f"r{i}" for i in range(10)], 30)
    y = np.arange(groups.size) % 3
    keep, held = stratified_split(y, 0.3, seed=1, groups=groups)
    assert not set(groups[keep]) & set(groups[held])
    assert 0.25 <= held.size / y.size <= 0.45
    with pytest.raises(DataError):
        stratified_split(y, 0.3, 0, groups=np.full(y.size, "one"))
    with pytest.raises(DataError):
        stratified_split(y, 1.5, 0)


def test_file_source_holds_out_a_test_part_by_record(separable_npz):
    train, test = load_train_test(DataSpec(source=separable_npz, test_fraction=0.2))
    assert not set(train.groups) & set(test.groups)
    assert len(train) + len(test) == 600


def test_separate_test_file_must_match(separable, tmp_path):
    a = separable.save_npz(tmp_path / "a.npz")
    b = BeatDataset(x=separable.x[:, :1], y=separable.y, classes=separable.classes)
    b.save_npz(tmp_path / "b.npz")
    with pytest.raises(DataError, match="test set"):
        load_train_test(DataSpec(source=str(a), test_source=str(tmp_path / "b.npz")))


def test_source_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_source(str(tmp_path / "missing.npz"))
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(DataError, match=".npz or .csv"):
        load_source(str(tmp_path / "x.bin"))
    (tmp_path / "broken.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_source(str(tmp_path / "broken.npz"))
    with pytest.raises(ConfigError, match="unknown split"):
        DataSpec(split="by-vibes")


def test_morph_context_on_a_file_without_its_channels_is_a_clear_error(tmp_path):
    plain = tmp_path / "plain.npz"
    load_source("synthetic", DataSpec(n_beats=120)).save_npz(plain)
    with pytest.raises(DataError, match="without the morphology channels"):
        load_source(str(plain), DataSpec(source=str(plain), morph_context=True))
    morph = tmp_path / "morph.npz"
    load_source("synthetic", DataSpec(n_beats=120, morph_context=True)).save_npz(morph)
    data = load_source(str(morph), DataSpec(source=str(morph), morph_context=True))
    assert data.channels[-3:] == ("qrs_corr", "qrs_amp_ratio", "beat_dev")


def test_morphology_templates_survive_samples_and_npz_files(tmp_path):
    from edgeexit.data.dataset import check_templates, stratified_sample
    from edgeexit.runtime.preprocess import default_r_offset

    data = load_source("synthetic", DataSpec(n_beats=300, morph_context=True, seed=1))
    assert data.templates is not None and data.templates.shape == (len(data), data.x.shape[-1])
    assert load_source("synthetic", DataSpec(n_beats=300, seed=1)).templates is None
    sample = stratified_sample(data, 120, seed=0)
    back = load_npz(sample.save_npz(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.templates, sample.templates)
    check_templates(back, back.templates, default_r_offset(data.x.shape[-1]))
    with pytest.raises(DataError, match="templates must have shape"):
        BeatDataset(x=data.x, y=data.y, classes=data.classes, channels=data.channels,
                    templates=data.templates[:-1])
    bad = data.templates.copy()
    bad[3, 7] = np.nan
    with pytest.raises(DataError, match="1 NaN/Inf values in the morphology templates"):
        BeatDataset(x=data.x, y=data.y, classes=data.classes, channels=data.channels,
                    templates=bad)


def test_an_older_file_without_templates_gets_them_rebuilt_or_a_warning(tmp_path, caplog):
    import dataclasses

    data = load_source("synthetic", DataSpec(n_beats=300, morph_context=True, seed=1))
    old = dataclasses.replace(data, templates=None)
    back = load_source(str(old.save_npz(tmp_path / "old.npz")))
    assert back.templates is not None
    g = data.groups
    settled = np.ones(len(g), bool)
    for s in np.flatnonzero(np.r_[True, g[1:] != g[:-1]]):
        settled[s : s + 8] = False  # the first beats had the generator's lead-in behind them
    np.testing.assert_allclose(back.templates[settled], data.templates[settled], atol=1e-6)
    shuffled = old.subset(np.random.default_rng(0).permutation(len(old)))
    with caplog.at_level("WARNING"):
        assert load_source(str(shuffled.save_npz(tmp_path / "shuffled.npz"))).templates is None
    assert "no morphology templates" in caplog.text


def test_beat_times_survive_subsets_npz_files_and_joins(separable, tmp_path):
    import dataclasses

    from edgeexit.data.dataset import concatenate

    data = dataclasses.replace(separable, times=np.arange(len(separable)) * 0.5)
    part = data.subset(np.array([3, 1]))
    assert part.times.tolist() == [1.5, 0.5]
    back = load_npz(data.save_npz(tmp_path / "t.npz"))
    assert np.array_equal(back.times, data.times)
    joined = concatenate([part, data.subset(np.array([0]))])
    assert joined.times.tolist() == [1.5, 0.5, 0.0] and joined.groups.shape == (3,)
    assert concatenate([part, separable.subset(np.array([0]))]).times is None
    with pytest.raises(DataError, match="times"):
        dataclasses.replace(separable, times=np.zeros(2))


def test_the_default_synthetic_training_set_spans_many_paced_patients_of_both_polarities():
    # 6000 beats from 24 patients held six paced ones, too few for a model to recognise the
    # beats of an unseen paced patient; the patients now grow with the beats
    from edgeexit.data import load_split, synthetic_patients
    from edgeexit.runtime.preprocess import default_r_offset

    data = load_split(DataSpec(), "train")
    assert synthetic_patients(len(data)) == len(np.unique(data.groups)) == 48
    assert synthetic_patients(2000) == 24  # the test set keeps its patients
    paced = np.unique(data.groups[data.y == AAMI_CLASSES.index("Q")])
    r = default_r_offset(data.x.shape[-1])
    polarity = []
    for g in paced:  # the sign of the paced QRS at the R peak, against the window's median
        ecg = data.x[(data.groups == g) & (data.y == AAMI_CLASSES.index("Q")), 0]
        polarity.append(np.sign(np.median(ecg[:, r] - np.median(ecg, axis=1))))
    assert paced.size >= 10 and min(polarity.count(1.0), polarity.count(-1.0)) >= 5
