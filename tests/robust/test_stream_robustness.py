"""The stream-level robustness evaluation (edgeexit.robust.stream): the device path on continuous
signals reproduces ``run --stream``, the noise mixer hits its SNR, the timing attack moves the
device's detections, and every attack on the continuous signal stays inside its budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from edgeexit.cli import main
from edgeexit.robust.names import StreamAttack
from edgeexit.robust.stream.attacks import TimingAttack, make_stream_attack
from edgeexit.robust.stream.device import Tally, run_device
from edgeexit.robust.stream.noise import mix_noise
from edgeexit.robust.stream.records import StreamRecord, synthetic_stream_records
from edgeexit.runtime.peaks import detect_r_peaks

FS = 360.0


@pytest.fixture(scope="module")
def stream_bundle(int8_bundle):
    """The conftest's int8 bundle of the untrained fixed model (one lead + RR context, 128
    samples, exits 1 and 3): built once for the whole suite, so these tests add no export."""
    return int8_bundle


@pytest.fixture(scope="module")
def record():
    """One simulated record (about 75 s, every AAMI class), annotated with its true R peaks."""
    (rec,) = synthetic_stream_records(300, seed=11, window=128, patients=1)
    keep = rec.ann_samples < 75 * FS
    return StreamRecord(rec.name, rec.signal[: int(75 * FS)], FS, rec.ann_samples[keep],
                        rec.ann_labels[keep])


def test_synthetic_records_stream_the_same_patients_whatever_the_beats():
    """60 and 300 beats are the same simulated patients (prefixes), not other ones: attack
    strength varies several-fold between patients, so a figure's change with the beats streamed
    must not be a change of patients."""
    short, long = (synthetic_stream_records(n, seed=5, window=128) for n in (60, 300))
    assert len(short) == len(long) == 4
    assert 60 <= sum(r.ann_samples.size for r in short) <= 64
    for a, b in zip(short, long):
        assert a.name == b.name and 0 < a.ann_samples.size < b.ann_samples.size
        assert np.array_equal(a.signal, b.signal[: a.signal.size])
        assert np.array_equal(a.ann_labels, b.ann_labels[: a.ann_labels.size])
        assert a.ann_samples[-1] < a.signal.size


@pytest.fixture(scope="module")
def engine(stream_bundle):
    from edgeexit.runtime.engine import Engine

    return Engine.from_bundle(stream_bundle, threads=1)


def test_device_path_reproduces_run_stream_bit_for_bit(stream_bundle, engine, record, tmp_path):
    csv = tmp_path / "signal.csv"
    np.savetxt(csv, record.signal, fmt="%.17g")
    r = CliRunner().invoke(main, ["run", str(stream_bundle), "--stream", str(csv), "--fs", "360",
                                  "--threads", "1"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    beats = [json.loads(line) for line in r.output.splitlines() if line.startswith('{"beat"')]
    run = run_device(engine, record.signal, FS)
    assert len(beats) > 60
    assert [b["r_sample"] for b in beats] == run.r_samples.tolist()
    assert [b["label_index"] for b in beats] == run.labels.tolist()
    assert [b["exit"] for b in beats] == run.exits.tolist()
    # every annotated beat found, and the tally counts each one once (missed ones too)
    t = Tally(5)
    answer = t.add(record.ann_samples, record.ann_labels, run, FS)
    assert t.tp + t.fn == record.ann_samples.size and t.fn <= 2
    assert t.confusion.sum() + t.missed.sum() == record.ann_samples.size
    assert (answer >= 0).sum() == t.confusion.sum()


def _nst_snr(clean: np.ndarray, noisy: np.ndarray, r: np.ndarray, labels: np.ndarray) -> float:
    """nst(1)'s SNR written out here independently: QRS range +-50 ms of the first 300 N beats
    (5 %/5 % trimmed mean), noise RMS per 1-s chunk about its mean (5 %/5 % trimmed)."""
    half = round(0.05 * FS)
    r = r[labels == 0][:300]
    ranges = np.sort([np.ptp(clean[p - half: p + half + 1]) for p in r if p >= half])
    k = math.floor(0.05 * len(ranges))
    app = ranges[k: len(ranges) - k].mean()
    n = noisy - clean
    chunks = [n[i: i + 360] for i in range(0, n.size - 359, 360)]
    rms = np.sort([np.sqrt(np.mean((c - c.mean()) ** 2)) for c in chunks])
    k = math.floor(0.05 * len(rms))
    return 10 * math.log10(app ** 2 / 8 / rms[k: len(rms) - k].mean() ** 2)


@pytest.mark.parametrize("kind", ["bw", "ma", "em"])
def test_noise_mixer_hits_the_snr_on_a_continuous_signal(record, kind):
    for snr in (12.0, 6.0, 0.0):
        noisy = mix_noise(record.signal, record.ann_samples, record.ann_labels, kind, snr, fs=FS, seed=3)
        assert abs(_nst_snr(record.signal, noisy, record.ann_samples, record.ann_labels) - snr) < 0.5


def test_noise_mixer_takes_nst_format_records_too(record, tmp_path):
    from test_noise import write_records

    from edgeexit.robust.noise import NoiseRecords

    records = NoiseRecords(write_records(tmp_path, seconds=20.0, kinds=("em",)))
    noisy = mix_noise(record.signal, record.ann_samples, record.ann_labels, "em", 6.0, fs=FS,
                      seed=1, records=records)  # the 20-s record wraps around over 75 s
    assert abs(_nst_snr(record.signal, noisy, record.ann_samples, record.ann_labels) - 6.0) < 0.5


def test_timing_attack_adds_detections_within_its_budget(engine, record):
    clean = run_device(engine, record.signal, FS)
    atk = TimingAttack(0.2)
    x = atk(record, clean)
    assert np.abs(x - record.signal).max() <= 0.2 + 1e-12
    attacked = run_device(engine, x, FS)
    # most bursts are taken for beats: the device's peaks (and its RR context) move
    new = attacked.peaks.size - clean.peaks.size
    assert atk.stats["bursts"] >= 15 and new >= 0.5 * atk.stats["bursts"], (new, atk.stats)
    assert not np.array_equal(attacked.r_samples, clean.r_samples)
    weak = run_device(engine, TimingAttack(0.01)(record, clean), FS)  # far below any QRS
    assert abs(weak.peaks.size - clean.peaks.size) <= 1
    # knowing the detector's amplitude rule: the bursts where the signal is tallest, the beats
    # shrunk; "best" keeps the variant with the most detections (no device given)
    found = {}
    for place, shrink in (("mid", False), ("amplitude", True), ("best", False)):
        a = TimingAttack(0.1, place=place, shrink=shrink)
        x = a(record, clean)
        assert np.abs(x - record.signal).max() <= 0.1 + 1e-12
        found[place] = detect_r_peaks(x, FS).size
        if place == "amplitude":  # the bursts that pass are minor beats: out of the context
            shrunk = run_device(engine, x, FS).summary
            extra = shrunk["peaks"] - clean.summary["peaks"]
            assert clean.summary["minor_beats"] == 0 and shrunk["minor_beats"] >= 0.5 * extra > 0
    assert found["best"] >= max(found["mid"], found["amplitude"]) > clean.peaks.size, found
    assert found["amplitude"] > found["mid"], found
    # shift: the same beats, most fiducial points moved, none by more than the timing budget
    shift = TimingAttack(0.2, mode="shift", shift_ms=20.0)
    x = shift(record, clean)
    assert np.abs(x - record.signal).max() <= 0.2 + 1e-12
    moved = run_device(engine, x, FS).peaks
    assert moved.size == clean.peaks.size
    d = np.abs(moved - clean.peaks)
    assert np.mean(d > 0) >= 0.5 and d.max() <= round(0.020 * FS), (np.mean(d > 0), d.max())


@pytest.fixture(scope="module")
def device(stream_bundle):
    from edgeexit.robust.stream.evaluate import device_path

    return device_path(stream_bundle, threads=1)[0]


@pytest.mark.parametrize("name", [a.value for a in StreamAttack])
def test_every_stream_attack_stays_inside_its_budget(device, record, name):
    sig = record.signal[: int(30 * FS)]
    clean = device.run(sig)
    # annotated with the device's own answers: every beat starts right, so every attack has work
    short = StreamRecord(record.name, sig, FS, clean.r_samples, clean.labels)
    eps = 0.05
    x = make_stream_attack(name, eps, steps=2, rounds=1, queries=4)(short, clean, device)
    d = np.abs(x - short.signal)
    assert x.shape == short.signal.shape and d.max() <= eps + 1e-12 and d.max() > 0.5 * eps


def test_evaluate_records_writes_the_report(stream_bundle, tmp_path):
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", str(stream_bundle), "--records", "synthetic",
                                  "--minutes", "0.4", "--record-names", "syn000,syn001",
                                  "--attacks", "timing", "--eps", "0.1", "--noise", "ma",
                                  "--snr", "0", "--min-sqi", "6", "--out", str(out),
                                  "--no-progress", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert [a["attack"] for a in rep["attacks"]] == ["timing"] and len(rep["noise"]) == 1
    assert rep["clean"]["detection"]["sensitivity"] > 0.95 and len(rep["records"]["list"]) == 2
    assert all(f["ok"] for f in rep["sanity"] if "budget" in f["check"])
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md"}
    # --min-sqi: the beats the device's quality gate flags under muscle noise at 0 dB are
    # reported apart, neither right, wrong nor missed (the confusion and the missed beats hold
    # the others); clean beats pass the gate
    assert rep["config"]["min_sqi"] == 6.0 and rep["clean"]["flagged_unreadable"]["annotated"] == 0
    noisy = rep["noise"][0]
    flagged = noisy["flagged_unreadable"]["annotated"]
    annotated = sum(x["beats"] for x in rep["records"]["list"])
    scored = np.sum(noisy["confusion"]) + sum(c["missed"] for c in noisy["per_class"].values())
    assert 0 < flagged < annotated and scored + flagged == annotated
    assert noisy["flagged_unreadable"]["fraction"] == pytest.approx(flagged / annotated)
    assert noisy["accuracy"] == pytest.approx(np.trace(noisy["confusion"]) / scored)
    for args, msg in ((["--attacks", "max_avg"], "unknown stream attack"),
                      (["--min-sqi", "0"], "--min-sqi"),
                      (["--device", "cuda"], "--device cuda is not supported there")):
        bad = CliRunner().invoke(main, ["evaluate", str(stream_bundle), "--records", "synthetic",
                                        *args, "--out", str(tmp_path / "x")])
        assert bad.exit_code in (1, 2) and msg in bad.output and "Traceback" not in bad.output


def test_tally_counts_missed_false_and_flagged_beats_apart():
    from edgeexit.robust.stream.device import DeviceRun

    ann = np.array([1000, 2000, 3000, 4000, 5000])
    labels = np.array([0, 1, 0, 2, 0])  # N S N V N
    # detections: 1000 (N, right), 2010 (S beat answered N), 3000 flagged, 4500 false (V),
    # 5050 not answered (refused); 4000 missed
    peaks = np.array([1000, 2010, 3000, 4500, 5050])
    run = DeviceRun(peaks, peaks[:4], np.array([0, 0, 0, 2]), np.zeros(4, np.int64), np.ones(4),
                    np.array([5050]), None, {}, np.array([False, False, True, False]))
    t = Tally(5, 4)
    answer = t.add(ann, labels, run, FS)
    assert answer.tolist() == [0, 0, -1, -1, -1]
    assert (t.tp, t.fp, t.fn) == (4, 1, 1)
    rep = t.report(("N", "S", "V", "F", "Q"))
    assert rep["flagged_unreadable"]["annotated"] == 1 and rep["flagged_unreadable"]["fraction"] == 0.2
    assert rep["per_class"]["N"]["missed"] == 1 and rep["per_class"]["V"]["missed"] == 1
    assert rep["per_class"]["N"]["sensitivity"] == 0.5  # 1 right of 2 (the flagged one apart)
    assert rep["per_class"]["N"]["ppv"] == 0.5 and rep["per_class"]["V"]["ppv"] == 0.0  # 1 false V
    assert rep["accuracy"] == 0.25 and rep["exit_histogram"] == [1.0, 0.0, 0.0, 0.0]
