"""Times each fused kernel against the plain-PyTorch way of doing the same job; prints a table and writes JSON.

    python bench/bench_kernels.py --out kernels.json [--device cpu|cuda] [--quick] [--threads N]
                                  [--clock wall|thread] [--group-norm-only] [--unet]

Sizes are the scorer's: a batch of 256 CIFAR images (3 x 32 x 32), in float32 and
bfloat16. Each case runs a few warm-up calls, then `repeats` timed calls of the fused
kernel and of the baseline, alternately (so both see the same machine load); the table
gives the medians. ns/elem is per image element (N * D); GB/s counts the bytes the job
must move at least (inputs read once, outputs written once) divided by the time, for
both the fused kernel and the baseline; ratio = baseline time / fused time (> 1: the
fused kernel is faster). Baselines draw their noise with torch.randn, so they do the
same amount of work but not the same numbers.

GroupNorm cases run on channels_last activations of the CIFAR-10 UNet (128 channels,
16 x 16) and of the demo UNet (32 channels, 28 x 28, one channel per group), batch / 4
images: the fused op (time-embedding add, GroupNorm, SiLU in one kernel) against the add,
F.group_norm and F.silu, and on the CPU at float32 also against what the fast-layer mode
ran before (the add and F.silu in torch around the NHWC GroupNorm kernel alone).
``--unet`` adds whole UNet forwards (demo architecture, batch 64) with the fused path on
and off, with and without the CPU fast-layer mode.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from qmia_fast.kernels import winograd as fastconv
from qmia_fast.kernels import group_norm as fused_ops
from qmia_fast import kernels as K
from qmia_fast.kernels import reference as R
from qmia_fast.atomic_io import write_json
from qmia_fast.build_info import build_info


def _timer(device: torch.device, clock: str = "wall") -> Callable[[Callable[[], object]], float]:
    if clock == "thread":
        # CPU time of this thread: immune to other processes on a shared machine, and
        # complete when the kernels and torch run on the calling thread (--threads 1).
        def run(fn):
            t0 = time.thread_time()
            fn()
            return time.thread_time() - t0
        return run
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return run


def _paired_medians(fused, baseline, device, warmup: int, repeats: int, clock: str = "wall"):
    """Median seconds of the fused call and of the baseline, timed alternately.

    Alternating the two keeps them under the same machine load, which matters on
    shared machines where the load changes within a second.
    """
    timer = _timer(device, clock)
    for _ in range(warmup):
        fused()
        baseline()
    if device.type == "cuda":
        torch.cuda.synchronize()
    fused_times, baseline_times = [], []
    for _ in range(repeats):
        fused_times.append(timer(fused))
        baseline_times.append(timer(baseline))
    return statistics.median(fused_times), statistics.median(baseline_times)


def _cases(n: int, shape, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn((n, *shape), generator=g).to(device=device, dtype=dtype)
    eps = torch.randn((n, *shape), generator=g).to(device=device, dtype=dtype)
    ref = torch.randn((n, *shape), generator=g).to(device=device, dtype=dtype)
    c1 = torch.linspace(0.9, 1.1, n, device=device)
    c2 = torch.linspace(-0.2, 0.2, n, device=device)
    c1_b = c1.to(dtype).reshape(-1, *[1] * len(shape))
    c2_b = c2.to(dtype).reshape(-1, *[1] * len(shape))
    gen = torch.Generator(device=device).manual_seed(1)
    size = x.element_size()
    numel = x.numel()
    # (name, fused, baseline, bytes the job must move)
    return [
        ("philox_normal vs randn",
         lambda: K.philox_normal(x.shape, seed=1, device=device, dtype=dtype),
         lambda: torch.randn(x.shape, generator=gen, device=device, dtype=dtype),
         numel * size),
        ("noise_inject vs randn + a*x + b*eps",
         lambda: K.noise_inject(x, c1, c2, seed=1),
         lambda: c1_b * x + c2_b * torch.randn(x.shape, generator=gen, device=device, dtype=dtype),
         2 * numel * size),
        ("eps_sq_error vs randn + ((e - n)**2).sum",
         lambda: K.eps_sq_error(x, seed=1),
         lambda: R.eps_sq_error_baseline(x, generator=gen),
         numel * size),
        ("ddim_step vs c1*x + c2*eps",
         lambda: K.ddim_step(x, eps, c1, c2),
         lambda: c1_b * x + c2_b * eps,
         3 * numel * size),
        ("ddim_step_sqerr vs op chain",
         lambda: K.ddim_step_sqerr(x, eps, c1, c2, ref),
         lambda: ((c1_b * x + c2_b * eps).float() - ref.float()).pow(2).flatten(1).sum(1),
         3 * numel * size),
        ("pnorm_error p=4 vs |a-b|**4 .sum",
         lambda: K.pnorm_error(x, ref, 4.0),
         lambda: R.pnorm_error_baseline(x, ref, 4.0),
         2 * numel * size),
    ]


def _group_norm_cases(n: int, dtype, device):
    """(name, shape, fused, baseline, bytes) for the UNet's GroupNorm + time embedding + SiLU."""
    cases = []
    for label, (channels, size) in (("cifar C128", (128, 16)), ("demo C32", (32, 28))):
        g = torch.Generator().manual_seed(channels)
        x = torch.randn(n, channels, size, size, generator=g).to(device=device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        temb = torch.randn(n, channels, generator=g).to(device=device, dtype=dtype)
        gamma, beta = torch.randn(channels, device=device), torch.randn(channels, device=device)
        nbytes = 2 * x.numel() * x.element_size()
        fused = (lambda x=x, temb=temb, gamma=gamma, beta=beta:
                 fused_ops.group_norm_act(x, 32, gamma, beta, silu=True, add=temb))
        cases.append((f"gn+temb+silu vs torch ops, {label}", list(x.shape), fused,
                      lambda x=x, temb=temb, gamma=gamma, beta=beta:
                      R.group_norm_act_baseline(x, 32, gamma, beta, silu=True, add=temb), nbytes))
        if device.type == "cpu" and dtype == torch.float32:
            cases.append((f"gn+temb+silu vs gn kernel alone, {label}", list(x.shape), fused,
                          lambda x=x, temb=temb, gamma=gamma, beta=beta: torch.nn.functional.silu(
                              fastconv.group_norm_nhwc(x + temb[:, :, None, None], 32, gamma, beta)), nbytes))
    return cases


def _unet_rows(device, warmup: int, repeats: int, clock: str) -> List[Dict]:
    """Demo-architecture UNet forwards (batch 64, random weights): the fused path against the plain one."""
    import contextlib

    from qmia_fast.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(T=1000, ch=32, ch_mult=[1, 2, 2], attn=[2], num_res_blocks=1, dropout=0.0, in_ch=1, img_size=28)
    model = model.eval().to(device=device, memory_format=torch.channels_last)
    x = torch.randn(64, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (64,), device=device)
    modes = {"plain layers": contextlib.nullcontext}
    if device.type == "cpu":
        modes["fast layers"] = fastconv.WinogradConvs
    rows = []
    for label, mode in modes.items():
        layers = mode()

        def forward(fused, layers=layers):
            model.set_fused(fused)
            with torch.inference_mode(), layers:
                return model(x, t)

        fused_s, base_s = _paired_medians(lambda: forward(True), lambda: forward(False), device, warmup, repeats,
                                          clock)
        rows.append(_row(f"unet demo fused vs unfused, {label}", "float32", [64, 1, 28, 28], fused_s, base_s,
                         x.numel(), 0))
    model.set_fused(None)
    return rows


def _row(op: str, dtype: str, shape, fused_s: float, base_s: float, elements: int, nbytes: int) -> Dict:
    return {
        "op": op, "dtype": dtype, "shape": shape,
        "fused_ms": fused_s * 1e3, "baseline_ms": base_s * 1e3,
        "fused_ns_per_element": fused_s * 1e9 / elements, "baseline_ns_per_element": base_s * 1e9 / elements,
        "fused_gbps": nbytes / fused_s / 1e9, "baseline_gbps": nbytes / base_s / 1e9,
        "ratio_baseline_over_fused": base_s / fused_s,
    }


def run(device_name: str, quick: bool, batch: int, clock: str = "wall", group_norm_only: bool = False,
        unet: bool = False) -> Dict:
    device = torch.device(device_name)
    if clock == "thread" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise SystemExit("bench_kernels: --clock thread measures one CPU thread: use it with --device cpu --threads 1")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_kernels: --device cuda but torch sees no GPU")
    warmup, repeats = (2, 5) if quick else (3, 31)
    shape = (3, 32, 32)
    results: List[Dict] = []
    for dtype in (torch.float32, torch.bfloat16):
        dtype_name = str(dtype).replace("torch.", "")
        if not group_norm_only:
            for name, fused, baseline, nbytes in _cases(batch, shape, dtype, device):
                fused_s, base_s = _paired_medians(fused, baseline, device, warmup, repeats, clock)
                results.append(_row(name, dtype_name, [batch, *shape], fused_s, base_s, batch * 3 * 32 * 32, nbytes))
        for name, gn_shape, fused, baseline, nbytes in _group_norm_cases(max(1, batch // 4), dtype, device):
            fused_s, base_s = _paired_medians(fused, baseline, device, warmup, repeats, clock)
            elements = gn_shape[0] * gn_shape[1] * gn_shape[2] * gn_shape[3]
            results.append(_row(name, dtype_name, gn_shape, fused_s, base_s, elements, nbytes))
    if not group_norm_only:
        # The bag's vote: 50,000 samples, 7 regressors.
        g = torch.Generator().manual_seed(2)
        scores = torch.randn(50_000, generator=g).to(device)
        thresholds = torch.randn(7, 50_000, generator=g).to(device)
        fused_s, base_s = _paired_medians(lambda: K.vote(scores, thresholds),
                                          lambda: R.vote_baseline(scores, thresholds), device, warmup, repeats, clock)
        results.append(_row("vote vs (s < t).sum, mean", "float32", [7, 50_000], fused_s, base_s, 350_000,
                            8 * 50_000 * 4))
    if unet:
        results.extend(_unet_rows(device, warmup, min(repeats, 11), clock))
    return {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "warmup": warmup, "repeats": repeats, "statistic": "median", "clock": clock,
        "results": results,
        "build_info": build_info(),
    }


def format_table(report: Dict) -> str:
    header = (f"{'kernel vs baseline':46s} {'dtype':8s} {'fused ms':>9s} {'base ms':>9s} {'fused ns/el':>11s} "
              f"{'base ns/el':>10s} {'fused GB/s':>10s} {'base GB/s':>9s} {'ratio':>6s}")
    lines = [f"device {report['device']}, torch threads {report['torch_threads']}, {report['clock']} clock, median "
             f"of {report['repeats']} after {report['warmup']} warm-up", header, "-" * len(header)]
    for r in report["results"]:
        lines.append(f"{r['op']:46s} {r['dtype']:8s} {r['fused_ms']:9.3f} {r['baseline_ms']:9.3f} "
                     f"{r['fused_ns_per_element']:11.3f} {r['baseline_ns_per_element']:10.3f} "
                     f"{r['fused_gbps']:10.2f} {r['baseline_gbps']:9.2f} {r['ratio_baseline_over_fused']:6.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("kernels.json"), help="where to write the JSON report")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--batch", type=int, default=256, help="images per batch (3 x 32 x 32 each)")
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall",
                        help="wall time (default), or this thread's CPU time (CPU, --threads 1: steady on a busy "
                             "shared machine)")
    parser.add_argument("--group-norm-only", action="store_true", help="only the GroupNorm cases")
    parser.add_argument("--unet", action="store_true", help="also whole UNet forwards, fused path on and off")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both the kernels and torch (default: torch's setting)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    report = run(args.device, args.quick, args.batch, args.clock, args.group_norm_only, args.unet)
    print(format_table(report))
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
