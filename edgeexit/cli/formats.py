"""Text for the terminal: one formatter per result the commands print (``--json`` prints the
result itself). Each takes the result's dict and returns the lines to print."""

from __future__ import annotations


def pct(v: float) -> str:
    return f"{100 * v:5.1f}"


def exits_table(exits: list[dict], split: str) -> str:
    """A per-exit table: cost, accuracy, macro-F1, per-class sensitivity/precision on ``split``."""
    first = exits[0][split]
    classes = list(first["per_class"])
    nsvf = "macro_f1_nsvf" in first
    head = f"{'exit':>4} {'MACs':>10} {'params':>8} {'acc%':>6} {'mF1':>6}"
    head += f" {'mF1nsvf':>7}" if nsvf else ""
    head += "  " + " ".join(f"{c + ' sen/pre%':>13}" for c in classes)
    lines = [head]
    params = 0
    for e in exits:
        r = e[split]
        params += e["stage_params"] + e["head_params"]
        line = f"{e['index']:>4} {e['cumulative_macs']:>10,} {params:>8,} {pct(r['accuracy']):>6}"
        line += f" {r['macro_f1']:6.3f}"
        line += f" {r['macro_f1_nsvf']:7.3f}" if nsvf else ""
        line += "  " + " ".join(
            f"{pct(r['per_class'][c]['sensitivity']).strip():>6}/"
            f"{pct(r['per_class'][c]['precision']).strip():<6}"
            for c in classes
        )
        lines.append(line.rstrip())
    return "\n".join(lines)


def train_text(m: dict, checkpoint) -> str:
    """``edgeexit train``: the cross-validation (if any), the run, and every exit on the test set."""
    lines = []
    if "cv" in m:
        lines += [f"cross-validation ({m['cv']['source']}):", m["cv"]["table"]]
    lines.append(f"{m['model']['family']}: {m['params']:,} parameters, best epoch {m['best_epoch']}, "
                 f"{m['elapsed_s']} s on {m['processes']} process(es)")
    lines.append(f"test set: {m['data']['test']['source']} ({m['data']['test']['beats']} beats)")
    settings = m["train_config"]["method_config"]
    lines.append(f"method: {m['train_config']['method']}"
                 + (" (" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")" if settings
                    else ""))
    lines.append(exits_table(m["exits"], "test"))
    lines.append(f"wrote {checkpoint} and metrics.json")
    return "\n".join(lines)


def models_text(models: dict) -> str:
    return "\n".join(f"{name:18} {desc}" for name, desc in models.items())


def info_text(d: dict) -> str:
    """``edgeexit info``: a checkpoint's or a family's exits, costs and compression."""
    lines = [f"{d['name']}: family {d['model']['family']}, {d['params']:,} parameters, "
             f"input {d['input_spec']['shape']} ({', '.join(d['input_spec']['channels'])})"]
    if d.get("classes"):
        lines.append(f"classes: {' '.join(d['classes'])}")
    comp = d.get("compression")
    if comp:
        pr, ft, pg = comp.get("prune") or {}, comp.get("finetune") or {}, comp.get("pruning") or {}
        lines.append(f"compressed from {comp.get('source_checkpoint')}: pruned {pr.get('ratio', 0):g} "
                     f"({pr.get('importance')}, {pr.get('scope')}), {100 * pg.get('macs_ratio', 1):.0f}%"
                     f" of the MACs; fine-tuned {ft.get('kind')} {ft.get('epochs')} epochs")
    lines.append(f"{'exit':>4} {'feature':>10} {'stage MACs':>11} {'head MACs':>10} "
                 f"{'MACs to exit':>13} {'stage par.':>10} {'head par.':>9}")
    for e in d["exits"]:
        lines.append(f"{e['index']:>4} {'x'.join(map(str, e['feature_shape'])):>10} "
                     f"{e['stage_macs']:>11,} {e['head_macs']:>10,} {e['cumulative_macs']:>13,} "
                     f"{e['stage_params']:>10,} {e['head_params']:>9,}")
    if d.get("test"):
        lines.append(f"final exit on the test set: accuracy {pct(d['test']['accuracy']).strip()}%")
    if d.get("architecture"):
        lines.append(d["architecture"])
    return "\n".join(lines)


def data_text(d: dict) -> str:
    """``edgeexit data inspect``: size, shape, channels and the class counts."""
    lines = [f"{d['source']}: {d['beats']} beats of shape {d['input_shape']} at {d['fs']} Hz, "
             f"channels {', '.join(d['channels'])}"
             + (f", {d['records']} records" if d["records"] else "")]
    total = max(d["beats"], 1)
    for name, count in d["class_counts"].items():
        lines.append(f"  {name:>3} {count:>8}  {100 * count / total:5.1f}%")
    return "\n".join(lines)


def targets_text(found: list) -> str:
    """``edgeexit targets``: one line per device preset."""
    lines = [f"{'id':12} {'cpu':28} {'cores':>5} {'dotprod':>7} {'format':>7} {'precision':>9} {'threads':>7}"]
    for t in found:
        lines.append(f"{t.id:12} {t.cpu.model[:28]:28} {t.cpu.cores:>5} {str(t.cpu.dotprod).lower():>7} "
                     f"{t.runtime.format:>7} {t.runtime.precision:>9} {t.runtime.threads:>7}")
    return "\n".join(lines)


def export_text(r: dict) -> str:
    """``edgeexit export``: the bundle, its parity with PyTorch, precisions and thresholds."""
    cal = r["policy"]["calibration"]
    lines = [f"bundle {r['bundle']} ({r['archive']}) for {r['target']}: {r['precision']}, "
             f"{', '.join(r['formats'])}",
             f"  exits deployed {','.join(map(str, r['exits']))} of the model's "
             f"{r['num_model_exits']} (one segment each)"]
    for fmt, par in r["parity"].items():
        errs = " ".join(f"{e['max_abs_err']:.2g}" for e in par["exits"])
        agree = " ".join(f"{100 * e['top1_agreement']:.1f}" for e in par["exits"])
        lines.append(f"  {fmt:7} vs PyTorch on {par['samples']} beats: max |logit err| {errs}; "
                     f"top-1 agreement % {agree}")
    for fmt, picks in (r.get("precision_choices") or {}).items():
        lines.append(f"  {fmt:7} precision per segment: " + "; ".join(
            f"{c['precision']} (fp32 {c['fp32_us']:.1f} us / int8 {c['int8_us']:.1f} us, agreement "
            f"{100 * c['fp32_agreement']:.1f}/{100 * c['int8_agreement']:.1f}%)" for c in picks))
    lines.append(f"  {r['policy']['name']} thresholds {cal['thresholds']} on {cal['samples']} "
                 f"validation beats: accuracy {pct(cal['accuracy']).strip()}% (final exit "
                 f"{pct(cal['final_accuracy']).strip()}%), exits "
                 + " ".join(f"{100 * f:.0f}%" for f in cal["exit_fractions"])
                 + f", {100 * cal['cost_ratio']:.0f}% of the all-exits MACs")
    lo, hi = cal["loss_interval"]
    lines.append(f"  accuracy loss {cal['loss_points']:.2f} points, {100 * cal['confidence']:g}% "
                 f"interval {lo:.2f}..{hi:.2f} ({cal['bound']})"
                 + ("" if cal.get("feasible", True) else "; NO thresholds keep it within the margin"))
    return "\n".join(lines)


def calibrate_text(r: dict, described: str, bundle: str, dry_run: bool) -> str:
    """``edgeexit calibrate``: the thresholds, their accuracy loss, cost and the curve."""
    c = r["policy"]["calibration"]
    lo, hi = c["loss_interval"]
    lines = [
        f"{r['policy']['name']} thresholds {r['policy']['thresholds']} on {c['samples']} beats "
        f"of {c['records'] or 'unknown'} records ({described}), costs in {c['cost_unit']}",
        f"  accuracy {pct(c['accuracy']).strip()}% (final exit {pct(c['final_accuracy']).strip()}%), "
        f"loss {c['loss_points']:.2f} points, {100 * c['confidence']:g}% interval "
        f"{lo:.2f}..{hi:.2f} ({c['bound']})",
        "  exits " + " ".join(f"{100 * f:.1f}%" for f in c["exit_fractions"])
        + f", expected cost {c['expected_cost']:.4g} ({100 * c['cost_ratio']:.0f}% of all exits)"
        + ("" if c.get("budget") is None else
           f", budget {c['budget']:g}: {'met' if c['feasible'] else 'NOT met'}"),
        "  accuracy/cost curve (calibration data): " + ", ".join(
            f"{100 * p['accuracy']:.2f}% at {100 * p['cost_ratio']:.0f}%" for p in c["pareto"])
        + (f" (plot: {r['pareto_plot']})" if r.get("pareto_plot") else ""),
    ]
    ch = r.get("exit_choice")
    if ch:
        b = ch["best"]
        lines.append(f"  exits worth their call (estimated from the bench's latencies): "
                     f"{','.join(map(str, b['exits']))}, {b['expected_us']:.1f} us expected "
                     f"(monolithic {ch['monolithic_us']:.1f} us; re-export with --exits to use it)")
    lines.append(f"{'not written (--dry-run)' if dry_run else 'wrote ' + bundle + '/manifest.json'}")
    if r.get("signature_removed"):
        lines.append(f"its signature covered the old manifest and was removed: sign it again "
                     f"(edgeexit sign {bundle} --key KEY)")
    return "\n".join(lines)


def verify_text(report, bundle: str) -> str:
    """``edgeexit verify``: one line per check, then the verdict."""
    lines = []
    for c in report.checks:
        detail = {k: v for k, v in c.items() if k not in ("check", "ok")}
        mark = "FAIL" if not c["ok"] else "SKIP" if "skipped" in c else "ok  "
        lines.append(f"{mark} {c['check']:24} " + " ".join(f"{k}={v}" for k, v in detail.items()))
    note = (f" (not checked here: {', '.join(report.unchecked)}; --strict fails)"
            if report.unchecked and report.ok else "")
    lines.append(f"{bundle}: {'verified' + note if report.ok else 'MISMATCH'}")
    return "\n".join(lines)


def bench_text(r: dict) -> str:
    """``edgeexit bench``: accuracy, latency percentiles, exits taken, ratios and energy."""
    lat = r["latency_us"]
    lines = [f"{r['samples']} windows, backend {r['backend']}, {r['threads']} thread(s), "
             f"{r['precision']}, policy {r['policy']}"]
    if "accuracy" in r:
        a = r["accuracy"]
        lines.append(f"accuracy: policy {pct(a['policy']).strip()}%, final exit "
                     f"{pct(a['final_exit']).strip()}% (loss {a['policy_loss_points']} points), "
                     f"monolithic {pct(a['monolithic']).strip()}%, exits "
                     + " ".join(f"{100 * v:.1f}" for v in a["exits"]))
    lines.append(f"{'latency us':16} {'mean':>9} {'p50':>9} {'p95':>9} {'p99':>9}")
    rows = [(f"segment {k}", s) for k, s in enumerate(lat["segments"])]
    rows += [("policy", lat["policy"]), ("all exits", lat["all_exits"]), ("monolithic", lat["monolithic"])]
    for name, s in rows:
        lines.append(f"{name:16} {s['mean']:>9.1f} {s['p50']:>9.1f} {s['p95']:>9.1f} {s['p99']:>9.1f}")
    ids = r.get("model_exits") or list(range(len(r["exit_histogram"])))
    note = "" if ids == list(range(len(ids))) else " (segments answer model exits " + \
        ",".join(map(str, ids)) + ")"
    lines.append("exits taken: " + " ".join(f"{k}:{n} ({100 * f:.1f}%)" for k, (n, f)
                                            in enumerate(zip(r["exit_histogram"], r["exit_fractions"])))
                 + note)
    ra = r["ratios"]
    lines.append(f"ratios (mean latency): all exits / monolithic {ra['all_exits_vs_monolithic']:.3f}, "
                 f"policy / monolithic {ra['policy_vs_monolithic']:.3f}")
    lines += _energy_lines(r.get("energy"))
    return "\n".join(lines)


def _energy_lines(e: dict | None) -> list[str]:
    if e and "error" in e:
        return [f"energy: NOT measured: {e['error']}"]
    if not e:
        return []
    pe, er = e["per_inference_mj"], e["ratios"]
    lines = [f"energy meter: {e.get('chosen') or e['meter']}",
             f"energy per inference, mJ, {e['label']}; idle {e['idle_w']:.2f} W ({e['idle']}):"]
    for name in ("policy", "all_exits", "monolithic"):
        lines.append(f"  {name.replace('_', ' '):12} gross {pe[name]['gross']:.5f}  above idle "
                     f"{pe[name]['above_idle']:.5f}")
    lines.append("  per segment above idle " + " ".join(f"{v:.5f}" for v in e["per_segment_mj"]["above_idle"])
                 + f"; ratio policy / monolithic {er['policy_vs_monolithic']} above idle, "
                 f"{er['policy_vs_monolithic_gross']} gross")
    return lines


def stream_summary_text(ev: dict) -> str:
    """``edgeexit run --stream``: the summary line."""
    line = (f"{ev['source']}: {ev['beats']} beats in {ev['signal_s']:.1f} s of signal, "
            f"{ev['realtime_factor']}x real time; answered {ev['answered']}")
    if "detection" in ev:
        d, c = ev["detection"], ev["classification"]
        line += (f"; detection Se {100 * d['sensitivity']:.2f}% +P {100 * d['ppv']:.2f}% "
                 f"({d['tolerance_s'] * 1000:.0f} ms); accuracy vs annotations "
                 f"{100 * c['accuracy']:.2f}% on {c['beats']} beats")
    if ev["filled_samples"]:
        line += (f"; {ev['filled_samples']} non-finite samples held at the last finite value, "
                 f"beats over them: {ev['beats_over_held_samples']} (lines with held_samples)")
    if ev["refused"]:
        line += f"; beats refused: {ev['refused']} (lines with error)"
    if "unreadable" in ev:
        line += (f"; flagged unreadable (SQI < {ev['min_sqi']:g}): {ev['unreadable']} "
                 "(lines with unreadable, scored apart)")
    return line


def bundle_line(d: dict | None) -> str:
    """One installed bundle: name, version, model, formats, signature."""
    if not d:
        return "none"
    if "error" in d and "bundle_version" not in d:
        return f"{d['path']} (UNREADABLE: {d['error']})"
    fp = d.get("key_fingerprint")
    return (f"{d['name']} (bundle version {d['bundle_version']}, {d['model']}, "
            f"{'/'.join(d['formats'])} {d['precision']}, "
            f"{'signed by ' + fp[:16] + '...' if fp else 'unsigned'})")


def install_text(r: dict) -> str:
    lines = [f"installed {bundle_line(r['installed'])} into {r['into']} in {r['seconds']} s",
             f"  previous: {bundle_line(r['previous'])}"]
    if r["unchecked"]:
        lines.append(f"  not replayed here (backend not installed): {', '.join(r['unchecked'])}")
    return "\n".join(lines)


def status_text(r: dict, check: bool) -> str:
    lines = [f"{r['into']}: current {bundle_line(r['current'])}",
             f"  previous: {bundle_line(r['previous'])}"]
    if check and r["current"]:
        lines.append(f"  hashes: {'ok' if r['current'].get('hashes_ok') else 'FAILED: ' + r['current'].get('error', '')}")
    return "\n".join(lines)
