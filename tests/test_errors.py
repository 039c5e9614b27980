"""Bad input fails early with a message that names the problem."""

import numpy as np
import pytest
import torch
from torch import nn
from toy_models import discrete_data, tiny_model

import dpddpm


@pytest.mark.parametrize(
    "bad,match",
    [
        ([12, 6, 6, 1], "strictly decreasing"),
        ([12, 6, 8, 1], "strictly decreasing"),
        ([12, 6, 2], "end at t_1 = 1"),
        ([13, 6, 1], "cannot start above T"),
        ([1], "at least 2"),
        ([12.5, 1], "integers"),
    ],
)
def test_bad_schedules(bad, match):
    model = tiny_model(T=12)
    with pytest.raises(ValueError, match=match):
        dpddpm.sample(model, bad, 2)
    with pytest.raises(ValueError, match=match):
        dpddpm.elbo(model, discrete_data(3), bad)


def test_bad_data():
    model = tiny_model(T=12)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        dpddpm.cost_matrix(model, discrete_data(4) * 2, progress=False)
    with pytest.raises(ValueError, match="shape"):
        dpddpm.cost_matrix(model, torch.zeros(4, 1, 5, 5), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        dpddpm.elbo(model, torch.full((2, 1, 4, 4), float("nan")), [12, 1])


class NaNNet(nn.Module):
    def forward(self, x, t):
        out = torch.zeros(x.shape[0], 2, *x.shape[2:])
        out[0, 0, 0, 0] = float("nan")
        return out


def test_nan_model_output_is_reported():
    model = dpddpm.DDPM(NaNNet(), dpddpm.NoiseSchedule.cosine(6), "learned_range", data_shape=(1, 4, 4), num_bins=17)
    with pytest.raises(FloatingPointError, match="model output"):
        dpddpm.cost_matrix(model, discrete_data(3), progress=False)


def test_nan_in_cost_matrix_is_reported():
    kl = np.full((5, 5), np.nan)
    kl[np.tril_indices(5, -1)] = 1.0
    kl[:, 0] = np.nan
    kl[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"kl\[3, 1\]"):
        dpddpm.CostMatrix(kl=kl, decoder=np.ones(5), prior=np.ones(5))


def test_mismatched_cost_file(tmp_path):
    costs = dpddpm.cost_matrix(tiny_model(T=6), discrete_data(3), progress=False)
    path = costs.save(tmp_path / "c.npz")
    with pytest.raises(ValueError, match="expected 'fixed_small'"):
        dpddpm.CostMatrix.load(path, expect={"variance": "fixed_small"})
    with pytest.raises(FileNotFoundError):
        dpddpm.CostMatrix.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        dpddpm.CostMatrix.load(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="cannot start above T"):
        dpddpm.schedule_bpd(costs, [7, 1])


def test_bad_model_configuration():
    sched = dpddpm.NoiseSchedule.cosine(6)
    with pytest.raises(ValueError, match="variance"):
        dpddpm.DDPM(nn.Identity(), sched, "learned", data_shape=(1,))
    with pytest.raises(ValueError, match="time_input"):
        dpddpm.DDPM(nn.Identity(), sched, "fixed_small", data_shape=(1,), time_input="seconds")
    with pytest.raises(ValueError, match="1..T"):
        dpddpm.DDPM(nn.Identity(), sched, "fixed_small", data_shape=(1,)).predict(torch.zeros(2, 1), 7)
    with pytest.raises(ValueError, match="alpha_bar"):
        dpddpm.NoiseSchedule(np.array([0.9, 0.5]))
    with pytest.raises(ValueError, match="beta"):
        dpddpm.NoiseSchedule.from_betas([0.1, 1.0])


def test_edge_arguments():
    sched = dpddpm.NoiseSchedule.cosine(6)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="0 <= s < t"):
        dpddpm.edge_bpd(sched, 3, 3, x, x, x, variance="fixed_small")
    with pytest.raises(ValueError, match="decoder edge runs from t = 1"):
        dpddpm.edge_bpd(sched, 3, 0, x, x, x, variance="fixed_small")
    with pytest.raises(ValueError, match="needs the network's variance"):
        dpddpm.edge_bpd(sched, 3, 1, x, x, x, variance="learned_range")


def test_data_off_the_model_grid_is_refused():
    """Digits scaled to [0, 1] (53.6 instead of 22.6 bits/dim before this check) and binary 0/1 images for an
    8-bit model are refused before any network call; data that never go below 0 draw a warning."""
    model = dpddpm.load_pretrained("digits-hybrid")
    digits = dpddpm.digits_split("test")[:4]
    with pytest.raises(ValueError, match="grid of 17 levels"):
        dpddpm.elbo(model, (digits + 1) / 2, [4000, 1])
    eight_bit = tiny_model(T=6, num_bins=256)
    binary = (torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    with pytest.raises(ValueError, match="grid of 256 levels"):
        dpddpm.cost_matrix(eight_bit, binary, progress=False)
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        dpddpm.elbo(tiny_model(T=6), binary, [6, 1])  # 0 and 1 are levels 8 and 16 of 17: allowed, but suspect
    dpddpm.elbo(eight_bit, torch.arange(256.0).reshape(16, 1, 4, 4) / 127.5 - 1, [6, 1])  # float32 rounding is fine


def _part(model, data, rows, seed=0):
    return dpddpm.cost_matrix(model, data, progress=False, rows=rows, seed=seed)


def test_merge_refuses_double_counting_mixing_and_other_models():
    model, data = tiny_model(T=6), discrete_data(5)
    a, b = _part(model, data, [1, 2, 3]), _part(model, data, [4, 5, 6])
    assert dpddpm.merge_costs([a, b]).is_complete
    with pytest.raises(ValueError, match="count those samples twice"):
        dpddpm.merge_costs([a, a])
    with pytest.raises(ValueError, match="count those samples twice"):
        dpddpm.merge_costs([a, _part(model, data, [3, 4, 5, 6])])
    with pytest.raises(ValueError, match="different seed"):  # replay would use the wrong noise
        dpddpm.merge_costs([a, _part(model, data, [4, 5, 6], seed=1)])
    other_rows = _part(model, discrete_data(5, seed=8), [4, 5, 6])
    with pytest.raises(ValueError, match="different data but cover different rows"):
        dpddpm.merge_costs([a, other_rows])
    other = tiny_model(T=6)
    with torch.no_grad():
        next(other.net.parameters()).mul_(2.0)
    with pytest.raises(ValueError, match="weights_fingerprint"):
        dpddpm.merge_costs([a, _part(other, data, [4, 5, 6])])
    with pytest.raises(ValueError, match="variance"):
        dpddpm.merge_costs([a, _part(tiny_model(T=6, variance="fixed_small"), data, [4, 5, 6])])
