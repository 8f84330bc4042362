"""Bench reports: Markdown + JSON + PNG plots from ``edgeexit bench`` results (host side).

:func:`write_bench_report` turns one bench result (the dict of ``edgeexit bench --json``) into a
directory: ``report.json`` (the result itself), ``report.md`` (tables, one line per figure, with
what is measured and what is estimated) and PNG plots, each with one message:

- ``accuracy_vs_energy.png`` / ``accuracy_vs_latency.png``: accuracy against mean energy (or
  latency) per inference as one shared exit threshold varies (the bench's threshold sweep), with
  the deployed policy and the monolithic model measured directly;
- ``exit_histogram.png``: where the inputs left;
- ``segment_latency.png``: the distribution of every segment's latency (percentile boxes);
- ``energy_per_inference.png``: energy per inference of the policy, all exits and the monolithic
  model, gross and above idle.

:func:`compare_results` puts several results (two devices, fp32 vs int8, ...) in one table and
plot (``edgeexit report RESULT...``). Results made on a device without matplotlib are plotted
here from their JSON. Every file is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from edgeexit.errors import ConfigError, DataError
from edgeexit.fileio import atomic_write, check_output_directory
from edgeexit.plots import pyplot, save_png

log = logging.getLogger(__name__)

PLOTS = ("accuracy_vs_energy.png", "accuracy_vs_latency.png", "exit_histogram.png",
         "segment_latency.png", "energy_per_inference.png")
COMPARE_PLOTS = ("compare_latency.png", "compare_energy.png", "compare_accuracy_vs_energy.png")


def load_result(path: str | os.PathLike) -> dict:
    """A bench result from ``path``: a ``bench --json`` file, or a report directory (its
    ``report.json``). Raises :class:`DataError` naming what is wrong."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such bench result (give a `bench --json` file or a "
                        "`bench --report` directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: not a bench JSON result ({e})") from None
    if not isinstance(d, dict) or "latency_us" not in d or "exit_histogram" not in d:
        raise DataError(f"{p}: not a bench result (no latency_us / exit_histogram): write one "
                        "with `edgeexit bench BUNDLE --json > FILE`")
    return d


def _energy(r: dict) -> dict | None:
    e = r.get("energy")
    return e if isinstance(e, dict) and "per_inference_mj" in e else None


def _energy_label(e: dict, above_idle: bool = True) -> str:
    kind = "measured" if e.get("kind") == "measured" else "estimated from CPU time"
    return f"energy per inference, mJ ({'above idle' if above_idle else 'gross'}; {kind})"


def _title(r: dict) -> str:
    host = r.get("host", {}).get("cpu") or "?"
    return f"{r.get('bundle', 'bundle')} ({r['backend']}, {r['precision']}, {host})"


def _sweep_plot(plt, r: dict, key: str, xlabel: str, points: dict, out: Path) -> Path | None:
    sweep = r.get("threshold_sweep", {}).get("points") or []
    if not sweep or key not in sweep[0]:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs = [p[key] for p in sweep]
    ys = [100 * p["accuracy"] for p in sweep]
    ax.plot(xs, ys, "-o", ms=3, color="tab:blue",
            label="policy, one shared threshold varied (costs: sum of measured segments)")
    markers = {"policy": ("*", "tab:red", 14), "monolithic": ("s", "black", 8),
               "all exits": ("^", "tab:gray", 8)}
    for name, (x, y) in points.items():
        if x is None or y is None:
            continue
        mk, col, size = markers[name]
        ax.plot([x], [100 * y], mk, color=col, ms=size, label=f"{name} (this path run on its own)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy, % (bench data)")
    ax.set_title("accuracy vs cost per inference as the exit threshold varies", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_png(fig, out)


def plot_bench(r: dict, out: Path) -> list[Path]:
    """The PNG plots of one bench result into ``out`` (what exists: no energy, no sweep plot)."""
    plt = pyplot()
    if plt is None:
        return []
    files = []
    acc = r.get("accuracy") or {}
    lat = r["latency_us"]
    e = _energy(r)
    if e is not None:
        pe = e["per_inference_mj"]
        f = _sweep_plot(plt, r, "energy_mj", _energy_label(e), {
            "policy": (pe["policy"]["above_idle"], acc.get("policy")),
            "monolithic": (pe["monolithic"]["above_idle"], acc.get("monolithic")),
            "all exits": (pe["all_exits"]["above_idle"], acc.get("final_exit"))},
            out / "accuracy_vs_energy.png")
        files += [f] if f else []
    f = _sweep_plot(plt, r, "latency_us", "mean latency per inference, us (batch 1)", {
        "policy": (lat["policy"]["mean"], acc.get("policy")),
        "monolithic": (lat["monolithic"]["mean"], acc.get("monolithic")),
        "all exits": (lat["all_exits"]["mean"], acc.get("final_exit"))},
        out / "accuracy_vs_latency.png")
    files += [f] if f else []

    files.append(_exit_histogram_plot(plt, r, out / "exit_histogram.png"))
    if r.get("segment_quantiles_us"):
        files.append(_segment_latency_plot(plt, r["segment_quantiles_us"],
                                           out / "segment_latency.png"))
    if e is not None:
        files.append(_energy_plot(plt, e, out / "energy_per_inference.png"))
    return files


def _exit_histogram_plot(plt, r: dict, path: Path) -> Path:
    hist = r["exit_histogram"]
    ids = r.get("model_exits") or list(range(len(hist)))
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    bars = ax.bar([f"exit {i}" for i in ids], [100 * v for v in r["exit_fractions"]], color="tab:blue")
    for b, v in zip(bars, hist):
        ax.annotate(f"{v}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylabel("inputs answered there, %")
    ax.set_xlabel("exit (model exit index)")
    ax.set_title(f"where the inputs left (policy {r['policy'].get('name')}, {r['samples']} inputs)",
                 fontsize=10)
    return save_png(fig, path)


def _segment_latency_plot(plt, q: dict, path: Path) -> Path:
    """Per-segment latency as boxes (25-75%) and whiskers (the extreme quantiles recorded)."""
    qs = q["q"]
    stats = []
    for k, v in enumerate(q["segments"]):
        at = dict(zip(qs, v))
        stats.append({"label": f"segment {k}", "whislo": at[min(qs)], "q1": at[25],
                      "med": at[50], "q3": at[75], "whishi": at[max(qs)], "fliers": []})
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ax.bxp(stats, showfliers=False)
    ax.set_ylabel("latency, us (batch 1)")
    ax.set_title(f"per-segment latency: box 25-75%, whiskers {min(qs)}-{max(qs)}%", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path)


def _energy_plot(plt, e: dict, path: Path) -> Path:
    """Gross and above-idle energy per inference of the three paths."""
    pe = e["per_inference_mj"]
    names = ["policy", "all_exits", "monolithic"]
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, [pe[n]["gross"] for n in names], 0.4, label="gross", color="tab:gray")
    ax.bar(xs + 0.2, [pe[n]["above_idle"] for n in names], 0.4, label="above idle", color="tab:green")
    ax.set_xticks(xs, ["policy", "all exits", "monolithic"])
    kind = "measured" if e["kind"] == "measured" else "ESTIMATED from CPU time"
    ax.set_ylabel("energy per inference, mJ")
    ax.set_title(f"energy per inference ({kind}, meter {e['meter']})", fontsize=10)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def bench_markdown(r: dict, plots: list[Path] = ()) -> str:
    """The Markdown of one bench result."""
    lat, ra = r["latency_us"], r["ratios"]
    host = r.get("host", {})
    lines = [f"# Bench report: {r.get('bundle', 'bundle')}", "",
             f"- host: {host.get('cpu', '?')} ({host.get('machine', '?')}, {host.get('cores', '?')} cores); "
             f"backend {r['backend']}, {r['threads']} thread(s), {r['precision']}",
             f"- policy: `{json.dumps(r['policy'])}`",
             f"- data: {r.get('data', {})}; {r['samples']} inputs at batch 1", ""]
    acc = r.get("accuracy")
    if acc:
        lines += [f"Accuracy: policy {100 * acc['policy']:.2f}%, final exit {100 * acc['final_exit']:.2f}% "
                  f"(loss {acc['policy_loss_points']} points), monolithic {100 * acc['monolithic']:.2f}%", ""]
    lines += ["| path | mean us | p50 | p95 | p99 |", "|---|---|---|---|---|"]
    rows = [(f"segment {k}", s) for k, s in enumerate(lat["segments"])]
    rows += [("policy", lat["policy"]), ("all exits", lat["all_exits"]), ("monolithic", lat["monolithic"])]
    lines += [f"| {n} | {s['mean']:.1f} | {s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} |" for n, s in rows]
    lines += ["", f"Latency ratios (means, measured side by side): policy / monolithic "
                  f"**{ra['policy_vs_monolithic']:.3f}**, all exits / monolithic {ra['all_exits_vs_monolithic']:.3f}.",
              "", "Exits taken: " + ", ".join(f"exit {i}: {n} ({100 * f:.1f}%)" for i, n, f in
                                               zip(r.get("model_exits") or range(len(r["exit_histogram"])),
                                                   r["exit_histogram"], r["exit_fractions"])), ""]
    e = r.get("energy")
    if isinstance(e, dict) and "error" in e:
        lines += [f"Energy: not measured ({e['error']}).", ""]
    elif e:
        pe = e["per_inference_mj"]
        lines += [f"## Energy per inference: {e['label']}", "",
                  f"Idle {e['idle_w']:.3f} W: {e['idle']}. Each path metered alone for "
                  f"{e['seconds_per_path']:g} s in {e['rounds']} rounds.", "",
                  "| path | gross mJ | above idle mJ |", "|---|---|---|"]
        lines += [f"| {n.replace('_', ' ')} | {pe[n]['gross']:.5f} | {pe[n]['above_idle']:.5f} |"
                  for n in ("policy", "all_exits", "monolithic")]
        seg = e["per_segment_mj"]
        lines += ["", "Per segment (mJ above idle; " + seg["note"] + "): "
                  + ", ".join(f"{v:.5f}" for v in seg["above_idle"]), "",
                  f"Energy ratios: policy / monolithic **{_fmt(e['ratios']['policy_vs_monolithic'])}** "
                  f"above idle, {_fmt(e['ratios']['policy_vs_monolithic_gross'])} gross; policy / all "
                  f"exits {_fmt(e['ratios']['policy_vs_all_exits'])}.", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


# what bench --report and report --out write (report with one result writes both sets)
BENCH_FILES = frozenset({"report.json", "report.md", *PLOTS})
COMPARE_FILES = frozenset({"compare.json", "compare.md", *COMPARE_PLOTS})
REPORT_FILES = BENCH_FILES | COMPARE_FILES
# a directory these wrote holds one of them: without it, a report.md or compare.md there is a
# user's own and is not replaced
REPORT_RECORDS = ("report.json", "compare.json")


def _out_dir(out: str | os.PathLike, option: str) -> Path:
    """``out`` as a directory, created if needed, after the rule for outputs
    (:func:`edgeexit.fileio.check_output_directory`; naming ``option``)."""
    out = Path(out)
    check_output_directory(out, REPORT_FILES, "bench/report", option, record=REPORT_RECORDS)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_bench_report(r: dict, out: str | os.PathLike) -> dict:
    """Write ``report.json``, ``report.md`` and the plots of bench result ``r`` into ``out``;
    returns ``{"dir", "files"}``."""
    out = _out_dir(out, "--report")
    data = (json.dumps(r, indent=2) + "\n").encode()
    atomic_write(out / "report.json", lambda f: f.write(data))
    plots = plot_bench(r, out)
    md = bench_markdown(r, plots).encode()
    atomic_write(out / "report.md", lambda f: f.write(md))
    files = [out / "report.json", out / "report.md", *plots]
    log.info("wrote the bench report %s (%d files)", out, len(files))
    return {"dir": str(out), "files": [str(f) for f in files]}


def compare_results(results: list[tuple[str, dict]], out: str | os.PathLike | None = None) -> dict:
    """One table (and, with ``out``, plots, ``compare.md`` and the rows as ``compare.json``) for
    several bench results.

    ``results``: ``(name, result)`` pairs. Returns ``{"rows": [...], "markdown", "files"}``.
    """
    if not results:
        raise ConfigError("give at least one bench result")
    rows = []
    for name, r in results:
        e = _energy(r)
        acc = r.get("accuracy") or {}
        rows.append({
            "result": name, "cpu": r.get("host", {}).get("cpu"), "backend": r["backend"],
            "precision": r["precision"], "policy": r["policy"].get("name"),
            "accuracy": acc.get("policy"), "loss_points": acc.get("policy_loss_points"),
            "policy_us": r["latency_us"]["policy"]["mean"],
            "monolithic_us": r["latency_us"]["monolithic"]["mean"],
            "latency_ratio": r["ratios"]["policy_vs_monolithic"],
            "energy_kind": e["kind"] if e else None,
            "policy_mj": e["per_inference_mj"]["policy"]["above_idle"] if e else None,
            "monolithic_mj": e["per_inference_mj"]["monolithic"]["above_idle"] if e else None,
            "energy_ratio": e["ratios"]["policy_vs_monolithic"] if e else None,
        })
    md = ["| result | CPU | backend | precision | policy | accuracy | loss (points) | policy us | "
          "monolithic us | latency ratio | energy | policy mJ | monolithic mJ | energy ratio |",
          "|" + "---|" * 14]
    for w in rows:
        md.append(f"| {w['result']} | {w['cpu'] or '?'} | {w['backend']} | {w['precision']} | {w['policy']} | "
                  f"{_fmt(None if w['accuracy'] is None else 100 * w['accuracy'], '.2f')}% | "
                  f"{_fmt(w['loss_points'], '.2f')} | {w['policy_us']:.1f} | {w['monolithic_us']:.1f} | "
                  f"{w['latency_ratio']:.3f} | {w['energy_kind'] or '-'} | {_fmt(w['policy_mj'], '.5f')} | "
                  f"{_fmt(w['monolithic_mj'], '.5f')} | {_fmt(w['energy_ratio'])} |")
    text = "\n".join(md) + "\n"
    files: list[str] = []
    if out is not None:
        out = _out_dir(out, "--out")
        files = [str(f) for f in _compare_plots(results, rows, out)]
        body = ("# Bench comparison\n\nEnergy above idle; 'estimated' figures come from CPU time and "
                "a target power model, not a meter.\n\n" + text
                + "".join(f"\n![{Path(f).stem}]({Path(f).name})\n" for f in files)).encode()
        data = (json.dumps({"rows": rows}, indent=2) + "\n").encode()
        atomic_write(out / "compare.json", lambda f: f.write(data))
        atomic_write(out / "compare.md", lambda f: f.write(body))
        files[:0] = [str(out / "compare.md"), str(out / "compare.json")]
    return {"rows": rows, "markdown": text, "files": files}


def _compare_plots(results, rows, out: Path) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    files = []
    names = [w["result"] for w in rows]
    xs = np.arange(len(rows))
    for key, unit, fname, title in (
            ("us", "mean latency per inference, us (batch 1)", "compare_latency.png", "latency"),
            ("mj", "energy per inference, mJ above idle", "compare_energy.png", "energy")):
        pol = [w[f"policy_{key}"] for w in rows]
        mono = [w[f"monolithic_{key}"] for w in rows]
        if all(v is None for v in pol):
            continue
        fig, ax = plt.subplots(figsize=(max(5.6, 1.4 * len(rows) + 2), 3.8))
        ax.bar(xs - 0.2, [v or 0 for v in mono], 0.4, label="monolithic", color="tab:gray")
        ax.bar(xs + 0.2, [v or 0 for v in pol], 0.4, label="early-exit policy", color="tab:blue")
        ax.set_xticks(xs, names, fontsize=8, rotation=15)
        ax.set_ylabel(unit)
        kinds = sorted({w["energy_kind"] for w in rows if w["energy_kind"]})
        note = f" ({', '.join(kinds)})" if key == "mj" else ""
        ax.set_title(f"{title} per inference: early exits vs monolithic{note}", fontsize=10)
        ax.legend(fontsize=8)
        files.append(save_png(fig, out / fname))
    if any(_energy(r) for _, r in results):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for name, r in results:
            sweep = r.get("threshold_sweep", {}).get("points") or []
            e = _energy(r)
            if not sweep or e is None or "energy_mj" not in sweep[0]:
                continue
            (line,) = ax.plot([p["energy_mj"] for p in sweep], [100 * p["accuracy"] for p in sweep],
                              "-", lw=1.2, label=f"{name}: threshold varied")
            acc = (r.get("accuracy") or {}).get("policy")
            if acc is not None:
                ax.plot([e["per_inference_mj"]["policy"]["above_idle"]], [100 * acc], "*", ms=12,
                        color=line.get_color(), label=f"{name}: deployed policy")
        ax.set_xlabel("energy per inference, mJ above idle")
        ax.set_ylabel("accuracy, % (each result's bench data)")
        ax.set_title("accuracy vs energy per inference, every result", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        files.append(save_png(fig, out / "compare_accuracy_vs_energy.png"))
    return files
