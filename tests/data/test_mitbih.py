"""Tests of the MIT-BIH (WFDB) loader.

Most tests write tiny synthetic WFDB records with ``wfdb.wrsamp``/``wfdb.wrann`` and run everywhere.
Tests marked ``mitdb`` read the real database in ``../shared/data/mitdb`` and skip without it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import MITDB

from edgeexit.data.dataset import AAMI_CLASSES
from edgeexit.data.mitbih import (
    AAMI_MAP,
    DS1,
    DS2,
    PACED,
    annotation_counts,
    list_records,
    load_mitbih,
    load_mitbih_split,
)
from edgeexit.errors import ConfigError, DataError
from edgeexit.runtime.preprocess import RR_FEATURES, default_r_offset

wfdb = pytest.importorskip("wfdb")

# wfdb 4.3.1 itself calls a pandas API that pandas deprecates; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:Warning")

needs_mitdb = [
    pytest.mark.mitdb,
    pytest.mark.skipif(not (MITDB / "100.hea").is_file(), reason=f"MIT-BIH not found at {MITDB}"),
]

# Beat counts per AAMI class from the annotations, as given in ../shared/data/README.md.
README_DS1 = {"N": 45866, "S": 944, "V": 3788, "F": 415, "Q": 8}
README_DS2 = {"N": 44259, "S": 1837, "V": 3221, "F": 388, "Q": 7}

FS = 360
RR = 300  # samples between synthetic beats (0.83 s)
# Every beat symbol once, with non-beat annotations in between that the loader must ignore.
BEAT_SYMBOLS = list(AAMI_MAP)


def write_record(
    directory: Path,
    name: str,
    leads: tuple[str, ...] = ("V1", "MLII"),
    symbols: list[str] | None = None,
    first: int = 60,
) -> np.ndarray:
    """Write a WFDB record whose lead ``k`` is zero except a spike of ``k + 1`` mV at every beat.

    The first beat sits at ``first`` samples (too close to the start for a 256-sample window when
    below 96), beats follow every :data:`RR` samples, and the record ends 100 samples after the
    last beat (too close to the end as well). Returns the beat samples.
    """
    symbols = BEAT_SYMBOLS if symbols is None else symbols
    beats = first + RR * np.arange(len(symbols))
    length = int(beats[-1]) + 100
    signal = np.zeros((length, len(leads)))
    for k in range(len(leads)):
        signal[beats, k] = k + 1.0
    wfdb.wrsamp(name, fs=FS, units=["mV"] * len(leads), sig_name=list(leads), p_signal=signal,
                fmt=["16"] * len(leads), write_dir=str(directory))
    # Non-beat annotations (rhythm change, noise) halfway between beats.
    extra = beats[:-1] + RR // 2
    samples = np.concatenate([beats, extra])
    labels = symbols + ["+" if i % 2 else "~" for i in range(extra.size)]
    order = np.argsort(samples, kind="stable")
    wfdb.wrann(name, "atr", samples[order], symbol=[labels[i] for i in order],
               write_dir=str(directory))
    return beats


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """A directory holding every DS1 and DS2 record name, each a short synthetic record."""
    d = tmp_path_factory.mktemp("split")
    for i, name in enumerate(DS1 + DS2):
        write_record(d, name, symbols=["N", "N", "A", "N", "V", "N", "F", "N", "Q", "N"][i % 3 :])
    return d


# ---------------------------------------------------------------- constants (no data needed)


def test_aami_map_matches_the_readme():
    expected = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}
    for cls, symbols in expected.items():
        assert sorted(s for s, c in AAMI_MAP.items() if c == cls) == sorted(symbols)
    assert len(AAMI_MAP) == sum(len(s) for s in expected.values())
    for not_a_beat in "+~|x!\"[]":
        assert not_a_beat not in AAMI_MAP


def test_record_lists():
    assert len(DS1) == len(DS2) == 22
    assert not set(DS1) & set(DS2)
    assert not set(PACED) & (set(DS1) | set(DS2))
    assert PACED == ("102", "104", "107", "217")


# ---------------------------------------------------------------- errors (no data needed)


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_mitbih(tmp_path / "nope")
    with pytest.raises(DataError, match="not found"):
        list_records(tmp_path / "nope")


def test_empty_directory(tmp_path):
    assert list_records(tmp_path) == []
    with pytest.raises(DataError, match="no WFDB records"):
        load_mitbih(tmp_path)
    with pytest.raises(DataError, match="no WFDB records"):
        load_mitbih(tmp_path, ["100"])


def test_record_without_annotations(tmp_path):
    write_record(tmp_path, "900")
    (tmp_path / "900.atr").unlink()
    with pytest.raises(DataError, match=r"900.*\.atr missing"):
        load_mitbih(tmp_path)
    with pytest.raises(DataError, match=r"\.atr missing"):
        annotation_counts(tmp_path, ["900"])


def test_missing_record_and_missing_signal(tmp_path):
    write_record(tmp_path, "900")
    with pytest.raises(DataError, match=r"record 901 not found.*records there: 900"):
        load_mitbih(tmp_path, ["900", "901"])
    (tmp_path / "900.dat").unlink()
    with pytest.raises(DataError, match=r"900.*signal file 900\.dat"):
        load_mitbih(tmp_path, ["900"])


def test_unknown_split_is_a_config_error(tmp_path):
    # Checked before the directory is even looked at.
    with pytest.raises(ConfigError, match="inter-patient, random"):
        load_mitbih_split(tmp_path / "nope", "by-age")


def test_bad_window_options(tmp_path):
    write_record(tmp_path, "900")
    with pytest.raises(ConfigError, match="r_offset"):
        load_mitbih(tmp_path, window=64, r_offset=64)
    with pytest.raises(ConfigError, match="window"):
        load_mitbih(tmp_path, window=0)


# ---------------------------------------------------------------- synthetic WFDB records


def test_list_records_sorted_and_paced_left_out(tmp_path):
    for name in ("201", "102", "100"):
        write_record(tmp_path, name)
    (tmp_path / "notes.txt").write_text("not a record")
    assert list_records(tmp_path) == ["100", "102", "201"]
    data = load_mitbih(tmp_path)
    assert sorted(set(data.groups)) == ["100", "201"]  # 102 is paced


def test_synthetic_record_labels_windows_and_context(tmp_path):
    beats = write_record(tmp_path, "900")
    data = load_mitbih(tmp_path, ["900"])
    off = default_r_offset(256)
    # The first beat (sample 60 < 96) and the last (100 samples before the end) are dropped.
    kept_symbols = BEAT_SYMBOLS[1:-1]
    assert data.y.tolist() == [AAMI_CLASSES.index(AAMI_MAP[s]) for s in kept_symbols]
    assert data.x.shape == (len(kept_symbols), 1 + len(RR_FEATURES), 256)
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    assert data.classes == AAMI_CLASSES and data.fs == FS and data.units == "mV"
    assert data.channels == ("MLII",) + RR_FEATURES and data.signal_channels == 1
    assert data.groups.tolist() == ["900"] * len(kept_symbols)
    assert data.source == f"{tmp_path.name}:900 (1 record)"
    # MLII is the second lead of the record: its spikes are 2 mV, at the R offset.
    np.testing.assert_allclose(data.x[:, 0, off], 2.0, atol=1e-3)
    assert np.abs(data.x[:, 0, :off]).max() < 1e-3
    # RR context counts the dropped first beat: the second beat has a full RR interval before it.
    np.testing.assert_allclose(data.x[:, 1, :], RR / FS, rtol=1e-6)
    np.testing.assert_allclose(data.x[:, 4, :], 1.0, rtol=1e-6)
    assert beats.size == len(BEAT_SYMBOLS)
    # every kept beat knows when it happened (seconds from the start of its record)
    np.testing.assert_allclose(data.times, beats[1:-1] / FS)


def test_morph_context_carries_the_templates_its_channels_were_computed_against(tmp_path):
    from edgeexit.data.dataset import check_templates, rebuild_templates

    write_record(tmp_path, "900")
    data = load_mitbih(tmp_path, ["900"], morph_context=True)
    assert data.templates.shape == (len(data), 256)
    check_templates(data, data.templates, default_r_offset(256))
    np.testing.assert_allclose(rebuild_templates(data, default_r_offset(256)), data.templates)
    assert load_mitbih(tmp_path, ["900"]).templates is None


def test_rr_context_uses_all_beats_including_q(tmp_path):
    # A Q beat between two N beats: without it, the next N beat would see a doubled RR interval.
    write_record(tmp_path, "900", symbols=["N", "N", "N", "Q", "N", "N"])
    data = load_mitbih(tmp_path, ["900"])
    np.testing.assert_allclose(data.x[:, 1, 0], RR / FS, rtol=1e-6)
    assert data.class_counts() == {"N": 3, "S": 0, "V": 0, "F": 0, "Q": 1}


def test_no_rr_context_and_other_window(tmp_path):
    write_record(tmp_path, "900")
    data = load_mitbih(tmp_path, ["900"], window=128, r_offset=40, rr_context=False)
    assert data.x.shape[1:] == (1, 128) and data.channels == ("MLII",)
    np.testing.assert_allclose(data.x[:, 0, 40], 2.0, atol=1e-3)


def test_synthetic_lead_by_name_and_fallback(tmp_path, caplog):
    write_record(tmp_path, "900", leads=("V5", "V2"))
    write_record(tmp_path, "901", leads=("V1", "MLII"))
    with caplog.at_level(logging.WARNING, logger="edgeexit.data.mitbih"):
        data = load_mitbih(tmp_path, ["900"])
    assert data.channels[0] == "V5"
    np.testing.assert_allclose(data.x[:, 0, default_r_offset(256)], 1.0, atol=1e-3)
    assert "900 has no lead MLII" in caplog.text and "V5" in caplog.text
    with pytest.raises(DataError, match=r"record 900 has no lead 'V1' \(it has: V5, V2\)"):
        load_mitbih(tmp_path, ["901", "900"], lead="V1")
    v2 = load_mitbih(tmp_path, ["900"], lead="V2")
    np.testing.assert_allclose(v2.x[:, 0, default_r_offset(256)], 2.0, atol=1e-3)


def test_annotation_counts_and_progress(tmp_path):
    write_record(tmp_path, "900")
    write_record(tmp_path, "901", symbols=["V", "V", "N"])
    counts = annotation_counts(tmp_path)
    assert list(counts) == list(AAMI_CLASSES)
    assert counts == {"N": 5 + 1, "S": 4, "V": 2 + 2, "F": 1, "Q": 3}
    calls = []
    load_mitbih(tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]


def test_inter_patient_split_keeps_patients_apart(split_dir):
    calls = []
    train, test = load_mitbih_split(split_dir, progress=lambda d, t: calls.append((d, t)))
    assert set(train.groups) == set(DS1) and set(test.groups) == set(DS2)
    assert train.source == f"{split_dir.name}:DS1 (22 records)"
    assert test.source == f"{split_dir.name}:DS2 (22 records)"
    assert train.classes == test.classes == AAMI_CLASSES
    assert calls == [(i, 44) for i in range(1, 45)]


def test_random_split_warns_and_mixes_patients(split_dir, caplog):
    with pytest.warns(UserWarning, match="inflated"):
        train, test = load_mitbih_split(split_dir, "random", seed=1, test_fraction=0.25)
    assert "inflated" in caplog.text
    assert len(test) == pytest.approx(0.25 * (len(train) + len(test)), abs=5)
    assert set(train.groups) & set(test.groups)  # the leak the warning is about
    with pytest.warns(UserWarning):
        again, _ = load_mitbih_split(split_dir, "random", seed=1, test_fraction=0.25)
    np.testing.assert_array_equal(again.y, train.y)


# ---------------------------------------------------------------- the real MIT-BIH database


class TestMITBIH:
    pytestmark = needs_mitdb

    def test_lead_mlii_picked_by_name_in_114(self):
        data = load_mitbih(MITDB, ["114"])
        assert data.channels == ("MLII",) + RR_FEATURES
        assert data.x.shape[1:] == (1 + len(RR_FEATURES), 256)
        rec = wfdb.rdrecord(str(MITDB / "114"))
        assert rec.sig_name == ["V5", "MLII"]  # swapped: MLII is the second lead
        peaks = wfdb.rdann(str(MITDB / "114"), "atr")
        first = next(s for s, sym in zip(peaks.sample, peaks.symbol) if sym in AAMI_MAP and s >= 96)
        start = first - default_r_offset(256)
        np.testing.assert_allclose(data.x[0, 0], rec.p_signal[start : start + 256, 1], atol=1e-6)

    def test_102_falls_back_to_its_first_lead(self, caplog):
        with caplog.at_level(logging.WARNING, logger="edgeexit.data.mitbih"):
            data = load_mitbih(MITDB, ["102"], rr_context=False)
        assert data.channels == ("V5",)
        assert "102 has no lead MLII" in caplog.text

    def test_explicit_unknown_lead(self):
        with pytest.raises(DataError, match=r"record 100 has no lead 'V1' \(it has: MLII, V5\)"):
            load_mitbih(MITDB, ["100"], lead="V1")

    def test_windows_and_rr_context(self):
        # 100 is sinus rhythm, 119 has ventricular bigeminy; 201 would not do: it has pauses > 3 s
        data = load_mitbih(MITDB, ["100", "119"])
        assert data.x.shape == (len(data), 1 + len(RR_FEATURES), 256) and data.x.dtype == np.float32
        assert data.fs == 360.0 and data.units == "mV"
        assert data.source == "mitdb:100,119 (2 records)"
        assert sorted(set(data.groups)) == ["100", "119"]
        pre_rr = data.x[:, data.channels.index("pre_rr"), 0]
        assert pre_rr.min() > 0.2 and pre_rr.max() < 3.0
        ratio = data.x[:, data.channels.index("pre_rr_ratio"), 0]
        assert 0.9 < float(np.median(ratio)) < 1.1
        assert np.abs(data.x[:, 0, :]).max() < 10.0  # physical mV, not ADC units

    def test_record_copy_without_atr(self, tmp_path):
        for ext in (".hea", ".dat"):
            shutil.copy(MITDB / f"100{ext}", tmp_path)
        with pytest.raises(DataError, match=r"record 100 .*\.atr missing"):
            load_mitbih(tmp_path, ["100"])

    @pytest.mark.slow
    def test_counts_match_the_readme(self):
        assert annotation_counts(MITDB, DS1) == README_DS1
        assert annotation_counts(MITDB, DS2) == README_DS2
        train, test = load_mitbih_split(MITDB, rr_context=False)  # 1 channel: 1/6 of the memory
        for data, expected in ((train, README_DS1), (test, README_DS2)):
            counts = data.class_counts()
            assert len(set(data.groups)) == 22
            # windows drop only beats within a window of either end of a record
            assert all(0 <= expected[c] - counts[c] <= 25 for c in AAMI_CLASSES), counts
            assert sum(expected.values()) - len(data) <= 50
