"""The benchmark's JSON reports as readable tables."""
from __future__ import annotations

from .timing import ROUNDING_RMS

def _label(key: str, entry: dict) -> str:
    return f"{key}={entry['precision_resolved']}" if key == "auto" else key


def format_table(report: dict) -> str:
    """The report as a human-readable table ('vs fp32 loop' only where a strict-fp32 baseline ran: CUDA)."""
    env = report.get("environment", {})
    lines = [f"qmia-fast scoring benchmark: SecMI t-error ({report['options']['t_sec']}, {report['options']['k']}), "
             f"device {env.get('device')}, torch {env.get('torch')}, {env.get('torch_threads')} thread(s), "
             f"CPU {env.get('cpu_model')}, load {env.get('load_average')}"]
    if env.get("gpu"):
        lines.append(f"GPU: {env['gpu']['name']} (sm {env['gpu']['capability']}, CUDA {env['gpu'].get('cuda')})")
    matmul = report.get("matmul")
    if matmul:
        lines.append("matmul rates measured now: " + ", ".join(
            f"{name} {matmul[name + '_gflops']:.0f}" for name in ("fp32", "tf32", "bf16", "fp16")
            if name + "_gflops" in matmul) + " GFLOP/s")
    for info in report.get("models", []):
        lines.append(f"model {info['model']}: {info['description']['parameters'] / 1e6:.2f}M parameters, "
                     f"{info['unet_gflop_per_image']:.2f} GFLOP per UNet call, "
                     f"weights {info['description']['weights']}; "
                     f"baseline: {info['baseline']}; auto -> {info['auto_resolves_to']}"
                     + (f"; {'; '.join(info['notes'])}" if info.get("notes") else ""))
    rows = report.get("scoring", [])
    strict = any("ratio_wall_strict" in e for row in rows for e in row["results"].values())
    width = max([11] + [len(_label(k, e)) for row in rows for k, e in row["results"].items()])
    header = (f"{'model':<8} {'batch':>5} {'variant':<{width}} {'fused':>5} {'img/s wall':>10} {'img/s cpu':>9} "
              f"{'ratio wall':>10} {'ratio cpu':>9} " + (f"{'vs fp32 loop':>12} " if strict else "")
              + f"{'UNet GFLOP/s':>12} {'of peak':>7} {'max rel diff':>12}")
    lines += ["", header, "-" * len(header)]
    for row in rows:
        for key, entry in row["results"].items():
            fused = {True: "on", False: "off"}.get(entry.get("fused"), "-")
            ratio_wall = f"{entry['ratio_wall']:.2f}x" if "ratio_wall" in entry else "1"
            ratio_cpu = f"{entry['ratio_cpu']:.2f}x" if "ratio_cpu" in entry else "1"
            vs_strict = (f"{entry['ratio_wall_strict']:.2f}x" if "ratio_wall_strict" in entry
                         else "1" if key == "baseline-fp32" else "-")
            peak = entry.get("matmul_peak_fraction")
            diff = entry.get("max_rel_diff_vs_strict" if strict else "max_rel_diff_vs_baseline")
            diff = "-" if diff is None else f"{diff:.1e}"
            lines.append(f"{row['model']:<8} {row['batch_size']:>5} {_label(key, entry):<{width}} {fused:>5} "
                         f"{entry['images_per_s_wall']:>10.2f} {entry['images_per_s_cpu']:>9.2f} {ratio_wall:>10} "
                         f"{ratio_cpu:>9} " + (f"{vs_strict:>12} " if strict else "")
                         + f"{entry['unet_gflops_wall']:>12.1f} "
                         f"{(f'{100 * peak:.0f}%' if peak is not None else '-'):>7} {diff:>12}")
    for row in rows:
        encode = row.get("vae_encode_s_per_image")
        if encode:
            lines.append(f"{row['model']} batch {row['batch_size']}: VAE encode (in each row's time, once per image) "
                         f"{1000 * encode['baseline']:.1f} ms/image in the plain-diffusers loop, "
                         f"{1000 * encode['qmia']:.1f} ms/image in qmia-fast")
    if strict:
        lines.append("(vs fp32 loop: the same loop with TF32 off; max rel diff: against that loop's scores)")
    over = [e for row in rows for e in row["results"].values() if (e.get("matmul_peak_fraction") or 0) > 1.0]
    if over:
        lines.append("(of peak: the time the UNet's direct-convolution FLOPs would take at this machine's measured "
                     "matrix-multiply rate, over the time measured; Winograd convolutions do up to 4x fewer "
                     "multiplications, so their rows can exceed 100%)")
    noisy = sorted({row["model"] for row in rows if row.get("score_rms_per_pixel", 1.0) < ROUNDING_RMS})
    if noisy:
        lines.append(f"note: {', '.join(noisy)}: the t-errors are float32 rounding noise (RMS per pixel < "
                     f"{ROUNDING_RMS:g}), so 'max rel diff' compares rounding, not the computation")
    if "vote" in report:
        v = report["vote"]
        lines.append(f"\nvote ({v['n']} x {v['models']}): kernel {v['kernel_s'] * 1e3:.1f} ms, numpy "
                     f"{v['numpy_s'] * 1e3:.1f} ms, {v['ratio']:.1f}x")
    if not report.get("complete", True):
        lines.append("(incomplete: the run stopped before every case was timed)")
    return "\n".join(lines)


def format_accuracy(report: dict) -> str:
    """The accuracy check as readable lines."""
    lines = [f"demo attack on {report.get('images')} images ({report['model']}, {report.get('device')}), score "
             f"{report.get('score')}, reference {report['reference']}, tolerance {report['tolerance']}"]
    def number(value) -> str:
        return "  n/a " if value is None else f"{value:.4f}"

    for label, run in report["runs"].items():
        for method, values in run["metrics"].items():
            lines.append(f"  {label:<11} ({run['precision_resolved']:<4}) {method:<18} AUC {number(values['auc'])}  "
                         f"TPR@1%FPR {number(values['tpr_at_1%fpr'])}   scoring {run['score_seconds']:.0f} s")
    if not report.get("meaningful", True):
        lines.append(f"WARNING: the reference t-errors are float32 rounding noise (RMS per pixel "
                     f"{report['runs'][report['reference']]['score_rms_per_pixel']:.1e} < {ROUNDING_RMS:g}): the "
                     "target's eps barely changes over the round trip (under-trained?); this check says nothing")
    for label, verdict in report["comparison_to_reference"].items():
        worst = max((d for m in verdict["deltas"].values() for d in m.values() if d is not None), default=None)
        lines.append(f"{label} vs {report['reference']}: largest metric change {number(worst)} "
                     f"({'within' if verdict['within_tolerance'] else 'OUTSIDE'} {report['tolerance']}); "
                     f"scores differ by {verdict['median_rel_score_diff']:.1e} (median) / "
                     f"{verdict['max_rel_score_diff']:.1e} (max) relative; Spearman {verdict['spearman']:.6f}")
    return "\n".join(lines)
