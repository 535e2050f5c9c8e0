"""CUDA-graph replay of one micro-batch's whole computation, and the asynchronous download of its scores."""
from __future__ import annotations

import torch


class GraphedBatch:
    """One micro-batch's computation captured as a CUDA graph, replayed with new inputs copied into its static tensors.

    `inputs` are the example tensors (pixels, sample ids, and a condition tensor or None);
    `fn(*inputs)` returns the scores.
    """

    def __init__(self, fn, inputs: tuple):
        device = next(t for t in inputs if t is not None).device
        self.static = tuple(None if t is None else t.clone() for t in inputs)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: lazy module loading, cuDNN autotuning, allocator pools, compilation
                fn(*self.static)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = fn(*self.static)

    def run(self, *inputs) -> torch.Tensor:
        """The scores of `inputs`, in a tensor that the next replay overwrites (the caller copies what it keeps)."""
        for static, value in zip(self.static, inputs):
            if static is not None:
                static.copy_(value)
        self.graph.replay()
        return self.static_output


class Pending:
    """A queued step: where it starts, its uploaded inputs and sample ids (for an fp32 redo), and its download."""

    __slots__ = ("start", "raw", "samples", "conditions", "host", "event")

    def __init__(self, start, raw, samples, conditions, host, event):
        self.start, self.raw, self.samples, self.conditions = start, raw, samples, conditions
        self.host, self.event = host, event


def start_download(result: torch.Tensor):
    """(host tensor, event): a pinned asynchronous copy on CUDA, the tensor itself elsewhere."""
    if result.device.type == "cuda":
        host = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
        host.copy_(result, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event
    return result, None
