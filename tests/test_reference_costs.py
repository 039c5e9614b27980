"""Refactoring guard: the bundled models' cost matrices equal the ones saved before the package was reorganized.

The files hold 14 rows (t = 4000 ... 2 and the decoder row) of each bundled model on the first 16 selection
images, seed 0, made with the code of the first release. Equal means equal to round-off: the float32 network's
outputs move by ~1e-7 between CPUs and batch shapes.
"""

from pathlib import Path

import pytest
from toy_models import assert_costs_close

import dpddpm

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["digits-hybrid", "digits-simple"])
def test_cost_matrix_equals_the_saved_reference(name):
    saved = dpddpm.CostMatrix.load(DATA / f"reference_costs_{name}.npz")
    model = dpddpm.load_pretrained(name)
    rows = [int(t) for t in saved.rows_done.nonzero()[0]]
    fresh = dpddpm.cost_matrix(
        model, dpddpm.digits_split("selection")[:16], rows=rows, batch_size=4096, progress=False, seed=0
    )
    assert fresh.meta["weights_fingerprint"] == saved.meta["weights_fingerprint"]  # the weights are untouched
    assert fresh.meta["data_fingerprint"] == saved.meta["data_fingerprint"]
    assert_costs_close(fresh, saved)
