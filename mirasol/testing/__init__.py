"""Parity testing for mirasol's ops (and yours): the tolerance table, the float64-oracle
check of DESIGN.md §5, NaN-poisoning of fresh buffers. Hypothesis strategies live in
``mirasol.testing.strategies`` (needs ``hypothesis``)."""

from mirasol.testing.parity import (ParityReport, assert_identical, assert_parity,
                                    compare_module_with_oracle, compare_modules,
                                    compare_with_oracle, parity_report)
from mirasol.testing.poison import poison_allocations
from mirasol.testing.tolerances import ATOL_FLOOR, GRAD_FACTOR, OUTPUT_FACTOR

__all__ = [
    "ParityReport", "assert_identical", "assert_parity", "compare_module_with_oracle",
    "compare_modules", "compare_with_oracle", "parity_report",
    "poison_allocations", "ATOL_FLOOR", "GRAD_FACTOR", "OUTPUT_FACTOR",
]
