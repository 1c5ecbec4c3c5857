"""``train.compile``: the training forward and backward through ``torch.compile`` (inductor).

The module being trained is compiled in place (``nn.Module.compile``), once, after Accelerate has
prepared it: its ``state_dict`` keeps its own names (no ``_orig_mod.`` prefix in checkpoints or
saved models), and under DDP the wrapper stays outside the compiled module, as PyTorch advises.
Shapes are static (``dynamic=False``) except the token axis of text batches, which each training
step marks dynamic (``mark_token_axis_dynamic``, with ``torch._dynamo.maybe_mark_dynamic``): one
graph serves every batch length, so batches need no padding past their longest text, and a
1-epoch run compiles a graph or two, not one per length. (``scripts/bench_compile.py`` part 2
measures both: on a 2-core AMX Xeon, 60 length-grouped batches compiled 6 static graphs, one per
multiple of 16, in 113 s, and 1 dynamic graph in 36 s, with the same step time after it.) Where a
model's code needs a fixed length, dynamo specialises that graph instead of failing; the recompile
limit is raised to one graph per length (``graph_budget``) so a resumed run compiles what an
uninterrupted one did instead of falling back to eager. ``data.pad_to_multiple_of`` still pads on
request. Evaluation runs eager (``eager_forward``): its batch size and lengths would each compile
another graph for one pass.

Compiled steps draw the same random numbers as eager ones: poolft's CPU dropout draws its masks
in an opaque op (``cpu_dropout.keep_mask_like``). A mask covers the padding too, so an eager run
draws the compiled run's masks when it pads its batches alike (the default: to the longest text;
or the same ``data.pad_to_multiple_of``). Torch's own dropout (``train.fast_kernels false``) is
replaced by inductor's random numbers, seeded from the default generator: its masks differ from
eager ones (the tests check exact resumption with poolft's dropout only). On the probe track the
compiled module is the head on cached states, whose batches are not padded further: lengths past
the graph budget run eager.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from ..data.labels import MULTI_LABEL
from ..errors import PoolftError

#: the per-token inputs of a text batch whose axis 1 (tokens) a compiled step marks dynamic
TOKEN_AXIS_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def mark_token_axis_dynamic(batch: dict[str, torch.Tensor]) -> None:
    """Mark axis 1 (tokens) of a text batch's ``input_ids``/``attention_mask``/``token_type_ids``
    dynamic, so one compiled graph serves every batch length.

    ``torch._dynamo.maybe_mark_dynamic``: a model whose code needs a fixed length gets a graph
    specialised to it (as with static shapes) rather than an error.
    """
    for key in TOKEN_AXIS_INPUTS:
        value = batch.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            torch._dynamo.maybe_mark_dynamic(value, 1)


def graph_budget(max_length: int, multiple: int | None) -> int:
    """The most graphs a compiled text run could need: one per padded length (where dynamo had to
    specialise the token axis), for a full and a short batch."""
    lengths = math.ceil(max_length / multiple) if multiple else max_length
    return 2 * lengths + 2


def compile_in_place(module: nn.Module) -> None:
    """Compile ``module``'s forward (and so its backward) in place with static shapes.

    Dynamo's caches are emptied first: every ``nn.Module`` call shares one code object, so graphs
    of an earlier run in this process (a sweep's, a test's) would count against the recompile
    limit and could push this run's shapes back to eager. Inductor's on-disk cache stays, so a
    graph compiled before is reused, not rebuilt.
    """
    if not hasattr(torch.compiler, "set_stance"):  # evaluation's eager_forward needs it
        raise PoolftError(f"train.compile needs torch >= 2.6 (this is {torch.__version__}); set train.compile false")
    torch._dynamo.reset()
    module.compile(dynamic=False)


def settle_problem_type(config: PretrainedConfig, multi_label: bool) -> None:
    """Set ``config.problem_type`` as the model's first forward would (transformers' rule).

    A forward that sets it changes what the compiled graph guards on: the next step would compile
    the whole model again.
    """
    if config.problem_type is None:
        single = "single_label_classification"
        config.problem_type = "regression" if config.num_labels == 1 else MULTI_LABEL if multi_label else single


@contextlib.contextmanager
def compile_limits(graphs: int) -> Iterator[None]:
    """Let dynamo keep at least ``graphs`` graphs per function before it falls back to eager."""
    limit = max(torch._dynamo.config.recompile_limit, graphs)
    with torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=max(limit * 8, 256)):
        yield


def eager_forward(compiled: bool) -> contextlib.AbstractContextManager:
    """Run compiled modules eagerly inside the block (evaluation), or nothing when not compiling."""
    return torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext()


@dataclass
class CompileStats:
    """What compiling cost in one run: graphs compiled, and the wall time and rows of the batches that compiled."""

    graphs: int = 0
    seconds: float = 0.0
    steps: int = 0
    samples: int = 0

    @staticmethod
    def compiled_graphs() -> int:
        """Graphs dynamo has compiled in this process so far."""
        return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])

    def count_step(self, graphs_before: int, started: float, rows: int) -> None:
        """A batch of ``rows`` that compiled new graphs: its wall time counts as compile time."""
        new = self.compiled_graphs() - graphs_before
        if new > 0:
            self.graphs += new
            self.seconds += time.perf_counter() - started
            self.steps += 1
            self.samples += rows

    def as_dict(self) -> dict[str, float | int]:
        return {"graphs": self.graphs, "seconds": self.seconds, "steps": self.steps, "samples": self.samples}
