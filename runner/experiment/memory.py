"""Peak memory of a run's phases (training, evaluation) and the bytes autograd saves for one training step.

Per phase and epoch, in MB (10^6 bytes), as metrics `mem.<phase>.<figure>_mb`:
- rss: the process's peak resident memory over the whole phase (Linux VmHWM, reset at the phase's start by
  writing 5 to /proc/self/clear_refs). Everything the process holds: Python, the datasets, the parameters,
  and the allocator's cached and fragmented blocks, so it moves in steps and can hide a method's cost.
- live: the peak of tensor bytes that the phase's first batch allocated and held at once (forward, backward
  and optimizer step), on top of what existed before it (parameters, optimizer state, the data). Counted
  exactly, storage by storage, by a dispatch mode: CPU's counterpart of CUDA's max_memory_allocated. The
  first batch only, because the mode costs Python work on every operation.
- saved (training): the bytes of the distinct tensor storages autograd saved for backward during the first
  batch's forward pass (torch.autograd.graph.saved_tensors_hooks): what direct backpropagation grows with.
- cuda_alloc, cuda_reserved (CUDA devices only): torch.cuda.max_memory_allocated / max_memory_reserved
  over the whole phase, reset at its start: absolute, so the dataset, the weights, the optimizer state and
  the best weights' copy are in them.
- cuda_added (CUDA devices only): the phase's peak allocated minus what was allocated when it started: the
  memory the phase itself needed (activations, saved tensors, gradients), which batch size and gradient
  method change.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MB = 1e6
_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _storage_keys(tensors) -> set[int]:
    keys = set()
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            try:
                keys.add(t.untyped_storage().data_ptr())
            except (RuntimeError, NotImplementedError):
                pass
    return keys


class LiveTensorBytes(TorchDispatchMode):
    """While active: the bytes of tensor storages that operations created and that are still alive, and their
    peak. A view or an in-place result shares a storage it was given and is not new."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._tracked: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = None
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # sparse and other layouts without one storage
                continue
            key = storage.data_ptr()
            if key in self._tracked or storage.nbytes() == 0:
                continue
            given = given if given is not None else _storage_keys(tree_flatten((args, kwargs))[0])
            if key in given:
                continue
            self._tracked.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key, storage.nbytes())
        return out

    def _freed(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes


class SavedTensorBytes:
    """Context manager: bytes of the distinct storages autograd saves for backward while it is active."""

    def __init__(self) -> None:
        self.bytes = self.tensors = 0  # distinct storages' bytes; every saved tensor (views included)
        self._seen: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.tensors += 1
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self) -> SavedTensorBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def reset_peak_rss() -> bool:
    """Reset the process's peak resident memory to its current one; False where Linux's interface is missing."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """VmHWM: the process's peak resident memory since the last reset (Linux), else None."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PhaseMemory:
    """The memory figures of one phase of one epoch (see the module docstring).

    `with memory.phase():` around the phase; `memory.batch_started()` before the first batch's forward,
    `memory.forward_done()` after its loss, `memory.batch_done()` after its optimizer step (evaluation:
    batch_started and batch_done). Later batches are not traced; `metrics()` reads the figures.
    """

    def __init__(self, name: str, device: torch.device | str = "cpu") -> None:
        self.name, self.device = name, torch.device(device)
        self._live: LiveTensorBytes | None = None
        self._saved: SavedTensorBytes | None = None
        self._figures: dict[str, float] = {}
        self._traced = False

    @contextmanager
    def phase(self):
        self._figures, self._traced = {}, False
        rss_resettable = reset_peak_rss()
        cuda = self.device.type == "cuda"
        at_start = 0
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            at_start = torch.cuda.memory_allocated(self.device)
        try:
            yield self
        finally:
            self._stop_tracing()
        rss = peak_rss_bytes() if rss_resettable else None
        if rss is not None:
            self._figures["rss_mb"] = rss / MB
        if cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            self._figures["cuda_alloc_mb"] = peak / MB
            self._figures["cuda_added_mb"] = (peak - at_start) / MB
            self._figures["cuda_reserved_mb"] = torch.cuda.max_memory_reserved(self.device) / MB

    def batch_started(self, saving: bool = True) -> None:
        """Trace this batch if it is the phase's first; `saving`: count what autograd saves until forward_done."""
        if self._traced:
            return
        self._traced = True
        self._live = LiveTensorBytes()
        self._live.__enter__()
        if saving and torch.is_grad_enabled():
            self._saved = SavedTensorBytes().__enter__()

    def forward_done(self) -> None:
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            self._figures["saved_mb"] = self._saved.bytes / MB
            self._saved = None

    def batch_done(self) -> None:
        self.forward_done()
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._figures["live_mb"] = self._live.peak / MB
            self._live = None

    def _stop_tracing(self) -> None:
        """A batch that raised leaves no mode or hook behind."""
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            self._saved = None
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def metrics(self) -> dict[str, float]:
        return {f"mem.{self.name}.{k}": round(v, 3) for k, v in self._figures.items()}


def format_memory(metrics: dict[str, float]) -> str:
    """The epoch line's memory part: peak RSS and live tensor bytes of training (and evaluation), saved bytes;
    on CUDA the peak allocated and, in brackets, what the phase added to it."""

    def figure(phase: str) -> str:
        rss, live = metrics.get(f"mem.{phase}.rss_mb"), metrics.get(f"mem.{phase}.live_mb")
        parts = [f"{v:.0f}" if v is not None else "-" for v in (rss, live)]
        return "/".join(parts)

    def cuda_figure(phase: str) -> str:
        peak, added = metrics.get(f"mem.{phase}.cuda_alloc_mb"), metrics.get(f"mem.{phase}.cuda_added_mb")
        return "-" if peak is None else f"{peak:.0f}" + (f" (+{added:.0f})" if added is not None else "")

    if not any(k.startswith("mem.") for k in metrics):
        return ""
    saved = metrics.get("mem.train.saved_mb")
    cuda = (
        f"  CUDA MB train {cuda_figure('train')} val {cuda_figure('val')}"
        if "mem.train.cuda_alloc_mb" in metrics
        else ""
    )
    return (
        f"  mem MB train {figure('train')} val {figure('val')}"
        + (f" saved {saved:.1f}" if saved is not None else "")
        + cuda
    )


@contextmanager
def named_phase(name: str):
    """Names the phase in a torch.OutOfMemoryError raised inside (the innermost name wins): the run's
    out-of-memory message says where it ran out (runner.experiment.app)."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        if not hasattr(exc, "phase"):
            exc.phase = name
        raise


def describe_peak(device: torch.device) -> str:
    """The peak memory so far, for an out-of-memory message: CUDA's allocated (of the GPU's total) or the RSS."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return f"{torch.cuda.max_memory_allocated(device) / MB:,.0f} MB allocated of the GPU's {total / MB:,.0f} MB"
    rss = peak_rss_bytes()
    return f"{rss / MB:,.0f} MB resident" if rss is not None else "unknown"
