"""Top kernels by self time (torch.profiler) of one baseline and one scorer call: bench_scoring.py's on_case hook."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch.profiler import ProfilerActivity, profile


def _self_time_us(event, on_device: bool) -> float:
    if on_device:  # torch >= 2.4 calls it device time; older releases cuda time
        return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0))
    return float(event.self_cpu_time_total)


def top_kernels(fn: Callable[[], object], device: torch.device, top: int = 15) -> dict:
    """Run fn once under torch.profiler; the `top` entries by self time, with their share of the total.

    On CUDA the entries are device kernels (self device time, kernels replayed from a CUDA
    graph included where CUPTI reports them: kernel_total_us says how much it saw against
    wall_s); on a CPU they are torch operators by self CPU time.
    """
    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    if on_device:
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        fn()
        if on_device:
            torch.cuda.synchronize(device)
    wall = time.perf_counter() - started
    events = [e for e in prof.key_averages()
              if not on_device or getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    events = [e for e in events if _self_time_us(e, on_device) > 0]
    total = sum(_self_time_us(e, on_device) for e in events)
    events.sort(key=lambda e: _self_time_us(e, on_device), reverse=True)
    rows = [{"name": e.key[:120], "calls": int(e.count), "self_us": _self_time_us(e, on_device),
             "share": _self_time_us(e, on_device) / total if total else 0.0} for e in events[:top]]
    return {"clock": "device self time" if on_device else "CPU self time (operators)", "wall_s": wall,
            "kernel_total_us": total, "kernels": rows}


def profiler_hook(variants: Sequence[str] = ("auto", "fp16:fused"), eager: bool = True, top: int = 15):
    """on_case hook for benchmark.run: profiles of one batch through the baseline and each listed variant that ran.

    eager: on CUDA also a copy of the first listed variant with CUDA graphs off, whose kernels
    the profiler always sees and whose launch gaps show what the graph removes.
    """
    def on_case(case: dict) -> dict:
        device, batch = case["device"], case["batch"]
        images = case["images"][:batch]
        baseline, scorers = case["baselines"]["baseline"], case["scorers"]
        chosen = [label for label in variants if label in scorers]
        # label -> a function that prepares what to profile and returns the call.
        prepare = {"baseline": lambda: (lambda: baseline.score(images, batch))}
        prepare.update({label: (lambda s: lambda: (lambda: s.score(images)))(scorers[label]) for label in chosen})
        if eager and chosen and device.type == "cuda":
            def eager_call():
                scorer = case["make_scorer"]({**case["variants"][chosen[0]], "cuda_graphs": False})
                scorer.score(images)  # warm-up: cuDNN plans, allocator
                return lambda: scorer.score(images)
            prepare[f"{chosen[0]} (eager)"] = eager_call
        profiles = {}
        for label, make_call in prepare.items():
            # A profiler failure must not cost the row its timings, which are already measured.
            try:
                profiles[label] = top_kernels(make_call(), device, top)
            except Exception as exc:  # noqa: BLE001
                profiles[label] = {"error": f"{type(exc).__name__}: {exc}"[:300], "kernels": []}
        return {"profile": profiles}

    return on_case


def format_profiles(report: dict) -> str:
    """The profiles in a report's rows as tables."""
    lines = []
    for row in report.get("scoring", []):
        for label, prof in (row.get("profile") or {}).items():
            if "error" in prof:
                lines.append(f"\ntop kernels: {row['model']} batch {row['batch_size']}, {label}: {prof['error']}")
                continue
            lines.append(f"\ntop kernels: {row['model']} batch {row['batch_size']}, {label}: {prof['clock']}, "
                         f"{prof['kernel_total_us'] / 1e3:.1f} ms in all, call wall {prof['wall_s'] * 1e3:.1f} ms")
            lines.append(f"  {'share':>6} {'ms':>8} {'calls':>6}  name")
            for k in prof["kernels"]:
                lines.append(f"  {100 * k['share']:>5.1f}% {k['self_us'] / 1e3:>8.2f} {k['calls']:>6}  {k['name']}")
    return "\n".join(lines)
