"""SecMI scoring throughput of qmia-fast against a SecMI-style plain-PyTorch baseline (the same run as `qmia-fast bench`).

    python bench/bench_scoring.py [--quick] [--threads 1] [--device cpu|cuda] [--models demo,cifar10]
                                  [--batch-sizes 'demo=16,64;cifar10=16'] [--precisions auto,fp32,bf16]
                                  [--out scoring.json]
    python bench/bench_scoring.py accuracy [--precisions auto,bf16] [--threads 1] [--out accuracy.json]

The first form prints the throughput table (baseline, each precision, ratio to the
baseline measured round by round, UNet FLOP rate, the machine's matrix-multiply rates,
vote kernel and bag training); `accuracy` runs the demo attack on fp32 scores and on
each other precision's scores and compares AUC and TPR at 1% FPR. Options: see
`qmia-fast bench --help`.
"""
from __future__ import annotations

import sys


def main(argv=None) -> None:
    from qmia_fast.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "accuracy":
        args = ["--accuracy", *args[1:]]
    elif args and args[0] == "scoring":
        args = args[1:]
    cli_main(["bench", *args])


if __name__ == "__main__":
    main()
