"""Context parallelism (mirasol.distributed): Ulysses over 1, 2 and 4 gloo processes on
CPU equals one process on the whole sequence — output and every gradient, by the parity
rule — for the block-causal family's masks (lengths; window + sinks; teacher forcing;
packed sequences whose boundaries fall inside the ranks' shards), packed and padded
cross-attention, with grouped-query heads; a refused call raises its named error on every
rank and leaves none waiting (tests/_ulysses_worker.py, one rank)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mirasol import chunked_causal_attention
from mirasol.distributed import ulysses_attention

WORKER = Path(__file__).with_name("_ulysses_worker.py")


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ulysses_equals_one_process(world):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={world}", str(WORKER)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def test_ulysses_needs_a_process_group():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        ulysses_attention(chunked_causal_attention, q, q, q, 4)
