"""What `qmia-fast info` prints: build_info() and the run plans measured on this machine as readable lines."""
from __future__ import annotations

from typing import Any, Dict, List


def _yes_no(flag: Any) -> str:
    return "yes" if flag else "no"


def format_info(info: Dict[str, Any]) -> List[str]:
    """build_info() as readable lines."""
    lines = [f"qmia-fast {info['qmia_fast']}  (python {info['python']}, torch {info['torch']}, "
             f"numpy {info['numpy']})",
             f"platform:      {info['platform']}"]
    cpu_module = info["cpu_module"]
    if cpu_module.get("built"):
        openmp = f"OpenMP {cpu_module['openmp_version']}" if cpu_module.get("openmp_version") else "no OpenMP"
        lines.append(f"CPU module:    built ({cpu_module.get('compiler')}, {cpu_module.get('build_type') or '?'}, "
                     f"{openmp}); noise loop: {cpu_module.get('simd_level')} build")
        lines.append(f"  flags:       {cpu_module.get('compile_flags')}")
    else:
        lines.append(f"CPU module:    MISSING ({cpu_module.get('error')})")
    cuda_module = info["cuda_module"]
    if cuda_module.get("built"):
        lines.append(f"CUDA module:   built for sm {', '.join(cuda_module['archs']) or '?'} with CUDA "
                     f"{cuda_module.get('cuda_compiler_version') or '?'}")
        lines.append(f"  flags:       {cuda_module.get('cuda_flags')}")
    else:
        lines.append("CUDA module:   not built (no nvcc at build time; reinstall with QMIA_CUDA=ON)")
    runtime = info["cuda_runtime"]
    if runtime.get("available"):
        names = "; ".join(f"{d['index']}: {d['name']} (sm {d['capability']}, {d['memory_gib']} GiB)"
                          for d in runtime["devices"])
        lines.append(f"CUDA runtime:  {runtime['device_count']} device(s): {names}")
    else:
        lines.append(f"CUDA runtime:  no device (torch.cuda.is_available() is False; torch built for CUDA "
                     f"{runtime.get('torch_cuda') or 'none'})")
    threads = info["threads"]
    lines.append(f"threads:       OpenMP {threads.get('openmp_max_threads')}, torch {threads.get('torch_threads')} "
                 f"(interop {threads.get('torch_interop_threads')}), OMP_NUM_THREADS="
                 f"{threads.get('OMP_NUM_THREADS') or 'unset'}")
    cpu = info["cpu"]
    lines.append(f"CPU:           {cpu.get('model') or cpu.get('machine')} ({cpu.get('logical_cores')} logical cores), "
                 f"torch capability {cpu.get('torch_capability')}")
    lines.append("CPU features:  " + ", ".join(f"{name} {_yes_no(v)}" for name, v in cpu["flags"].items()))
    lines.append(f"bf16 fast path: {'likely' if cpu.get('bf16_fast_path_likely') else 'unlikely'} "
                 "(native bf16 instructions: AVX512-BF16, AMX-BF16 or ARM BF16)")
    return lines


def plan_lines() -> List[str]:
    """What the run plans measured on this machine (cached), one line per model architecture and micro-batch."""
    from . import plan_probe

    path = plan_probe.cache_path()
    if path is None:
        return ["run plans:     not cached (QMIA_FAST_PLAN_CACHE=off): CPU 'auto' follows the CPU-flags rule"]
    entries = {key: value for key, value in plan_probe.cached_entries().items() if "seconds_per_image_call" in value}
    lines = [f"run plans:     {len(entries)} measured on this machine, cached in {path}"]
    for key, entry in sorted(entries.items()):
        timings = ", ".join(f"{name} {1000 * seconds:.2f}" for name, seconds in entry["seconds_per_image_call"].items())
        lines.append(f"  {entry.get('model', 'a model')}, micro-batch {entry.get('unet_batch')}: ms per image "
                     f"and UNet call: {timings}; same bits at every micro-batch size: "
                     f"{', '.join(n for n, ok in entry['micro_batch_invariant'].items() if ok) or 'none'} "
                     f"(measured {entry.get('measured_utc')})")
    return lines
