"""Side-by-side benchmarks of the attention ops (``mirasol bench``, bench/).

Every variant of a table runs in the same process on the same problem, one after the
other, and the table reports each one's median time and peak memory and its ratio to a
baseline: ratios, not absolute times, are what survive a noisy machine. TFLOP/s count only
the visible (query, key) pairs: useful work per second.

Tables:

* ``chunked``: chunked causal attention (N=4096, 8 heads, d=64, chunk 256). Against SDPA
  with a dense boolean mask (the usual way to express the pattern) and unmasked SDPA.
* ``cross-text``: Mirasol3B's text decoder cross-attention, 8 samples of 32-64 text queries
  against 128 audio-video latents (4 chunks x 32). Against SDPA on the padded batch with a
  key-padding mask, and SDPA on the packed tokens with a dense block-diagonal mask.
* ``cross-combiner``: the Transformer Combiner's block-diagonal attention, 16 chunks of
  about 600 tokens. Same baselines.
* ``family`` (:func:`family`, ``mirasol bench --op family``): the block-causal family
  (DESIGN.md §2a) at issue 19's shapes, fp32 and bf16: a window of 4 chunks with a chunk of
  sinks (N=8192, chunk 512), a one-chunk cache prefill (1,024 queries against 8,192 keys)
  and teacher forcing (N=2x4096), each against SDPA on the same keys and compiled
  FlexAttention with the same BlockMask (on CPU too, forward only), with the issue's targets
  as reported ratios (:func:`format_targets`). Not part of ``all``.
* ``token pooling`` (:class:`TokenPoolProblem`, in the GPU suite): the TTM Combiner's
  TokenLearner read, the triton backend against the torch composite.
* ``scaling`` (:func:`scaling`): the whole model, not one op (:mod:`.model_scaling`).

On CUDA the triton backend runs, and the optional rivals (:mod:`.rivals`: FlexAttention
compiled with the op's mask from :mod:`mirasol.masks` as its block mask, SDPA held to each
of its backends, flash-attn, xformers) join where they can: one that cannot be built or
fails to run is listed as skipped with the reason, never raised; one of mirasol's variants
that fails is a failed row (``Table.failed``) and the others still run. Timing
(:mod:`.timing`): loops of back-to-back calls between two marks of a timer (CUDA events;
``perf_counter`` as the CPU stand-in), with the host's time per call beside it. Given the
card's :class:`Peak`, a table also reports TFLOP/s as a fraction of the card's dense 16-bit
tensor-core peak.

One module per job: :mod:`.problems` (shapes, inputs, lineups), :mod:`.lineup` (what a
table compares), :mod:`.rivals`, :mod:`.peaks` (the card table), :mod:`.timing`,
:mod:`.formatting`, :mod:`.model_scaling`. The names below are re-exported here.
"""

from mirasol.benchmark import rivals
from mirasol.benchmark.formatting import (format_scaling, format_table, format_targets,
                                          table_record)
from mirasol.benchmark.lineup import Lineup, Skipped, Target, Variant
from mirasol.benchmark.model_scaling import ScalingRow, ScalingTable, scaling
from mirasol.benchmark.peaks import PEAKS_16BIT, Peak, card_peak, card_slug
from mirasol.benchmark.problems import (ChunkedProblem, CrossProblem, Setting, TokenPoolProblem,
                                        family, problems)
from mirasol.benchmark.rivals import Rival
from mirasol.benchmark.timing import Measurement, Table, device_label, measure, run

__all__ = [
    "ChunkedProblem", "CrossProblem", "Lineup", "Measurement", "PEAKS_16BIT", "Peak", "Rival",
    "ScalingRow", "ScalingTable", "Setting", "Skipped", "Table", "Target", "TokenPoolProblem",
    "Variant", "card_peak", "card_slug", "device_label", "family", "format_scaling",
    "format_table", "format_targets", "measure", "problems", "rivals", "run", "scaling",
    "table_record",
]
