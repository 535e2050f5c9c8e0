"""`qmia-fast info` and build_info(): every field present, JSON-serialisable, readable lines."""
from __future__ import annotations

import json

from click.testing import CliRunner

from qmia_fast.build_info import CPU_FLAGS, build_info
from qmia_fast.cli import cli


def test_build_info_has_every_section_and_is_json():
    info = build_info()
    for key in ("qmia_fast", "python", "torch", "numpy", "cpu_module", "cuda_module", "cuda_runtime", "threads", "cpu"):
        assert key in info
    assert info["cpu_module"]["built"] is True  # the CPU core is always compiled
    assert {"compiler", "compile_flags", "openmp", "openmp_max_threads"} <= set(info["cpu_module"])
    assert "-ffp-contract=off" in info["cpu_module"]["compile_flags"]
    if info["cuda_module"]["built"]:
        assert info["cuda_module"]["archs"] and info["cuda_module"]["cuda_compiler_version"]
        assert "--fmad=false" in info["cuda_module"]["cuda_flags"]
    assert set(CPU_FLAGS) <= set(info["cpu"]["flags"])
    assert isinstance(info["cpu"]["bf16_fast_path_likely"], bool)
    assert info["threads"]["torch_threads"] >= 1
    assert json.loads(json.dumps(info)) == info


def test_info_command_prints_readable_lines():
    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    for label in ("qmia-fast", "CPU module:", "CUDA module:", "CUDA runtime:", "threads:", "CPU features:",
                  "bf16 fast path:"):
        assert label in result.output
    assert "avx2" in result.output


def test_info_command_json():
    result = CliRunner().invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["cpu_module"]["built"] is True
    assert data["qmia_fast"] == build_info()["qmia_fast"]
