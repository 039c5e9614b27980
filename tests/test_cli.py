"""The command line: subcommands end to end on a tiny model, sharding + merge, errors, and --help."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from toy_models import discrete_data, tiny_model

import dpddpm
from dpddpm import cli

T = 12


@pytest.fixture
def tiny(monkeypatch):
    """Route every model/data option of the CLI to a tiny learned-variance model and 6 data points."""
    model, data = tiny_model(T=T), discrete_data(6)
    monkeypatch.setattr(cli.inputs, "load_model", lambda args: model)
    monkeypatch.setattr(cli.inputs, "load_data", lambda args: data)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return model, data


MODEL = ["--pretrained", "tiny", "--digits-split", "test", "--device", "cpu"]
NET = ["--pretrained", "tiny", "--device", "cpu"]  # for subcommands without data


def _assert_close(a, b):
    """Equal up to round-off: the two runs pack different batches, and float results depend on batch shapes and
    CPU kernels, so never compare bitwise. Standard errors come from differences of sums and keep fewer digits."""
    for name, rtol in (("kl", 1e-6), ("decoder", 1e-6), ("prior", 1e-6), ("stderr", 1e-5)):
        np.testing.assert_allclose(
            getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-10, equal_nan=True, err_msg=name
        )
    np.testing.assert_array_equal(a.counts, b.counts)


def test_two_shards_merge_to_unsharded_run(tiny, tmp_path):
    model, data = tiny
    full = dpddpm.cost_matrix(model, data, batch_size=5, progress=False, seed=0)
    parts = []
    for i in range(2):
        out = tmp_path / f"part{i}.npz"
        assert (
            cli.main(
                [
                    "costs",
                    *MODEL,
                    "--batch-size",
                    "5",
                    "--quiet",
                    "--shard-index",
                    str(i),
                    "--num-shards",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        part = dpddpm.CostMatrix.load(out)
        assert list(np.flatnonzero(part.rows_done)) == [t for t in range(1, T + 1) if t % 2 == i]
        parts.append(str(out))
    assert cli.main(["merge", str(tmp_path / "merged.npz"), *parts[:1]]) == 2  # incomplete
    assert cli.main(["merge", str(tmp_path / "merged.npz"), *parts]) == 0
    _assert_close(dpddpm.CostMatrix.load(tmp_path / "merged.npz"), full)


def test_torchrun_env_writes_rank_files(tiny, tmp_path, monkeypatch):
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert cli.main(["costs", *MODEL, "--quiet", "--out", str(tmp_path / "c.npz")]) == 0
    assert (tmp_path / "c.rank0.npz").exists() and (tmp_path / "c.rank1.npz").exists()
    assert not (tmp_path / "c.npz").exists()
    assert (
        cli.main(["merge", str(tmp_path / "c.npz"), str(tmp_path / "c.rank0.npz"), str(tmp_path / "c.rank1.npz")]) == 0
    )
    assert dpddpm.CostMatrix.load(tmp_path / "c.npz").is_complete


def test_costs_existing_file_needs_resume(tiny, tmp_path, capsys):
    out = str(tmp_path / "c.npz")
    assert cli.main(["costs", *MODEL, "--quiet", "--out", out]) == 0
    assert cli.main(["costs", *MODEL, "--quiet", "--out", out]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["costs", *MODEL, "--quiet", "--out", out, "--resume"]) == 0


def test_schedule_elbo_sample_export(tiny, tmp_path, capsys):
    model, data = tiny
    costs = tmp_path / "c.npz"
    assert cli.main(["costs", *MODEL, "--quiet", "--out", str(costs)]) == 0
    assert cli.main(["schedule", str(costs), "--steps", "4", "--json", str(tmp_path / "s.json")]) == 0
    saved = json.loads((tmp_path / "s.json").read_text())
    best = dpddpm.optimal_schedules(dpddpm.CostMatrix.load(costs), 4)
    assert saved["schedule"] == best.schedule(4).tolist()
    assert saved["bpd"] == pytest.approx(best.bpd(4))
    assert saved["dpddpm_version"] == dpddpm.__version__  # every results file records its maker

    assert (
        cli.main(
            ["elbo", *MODEL, "--quiet", "--schedule-json", str(tmp_path / "s.json"), "--json", str(tmp_path / "e.json")]
        )
        == 0
    )
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["bpd"] == pytest.approx(dpddpm.elbo(model, data, best.schedule(4)).bpd)
    assert e["dpddpm_version"] == dpddpm.__version__
    for spec in (["--even", "3"], ["--quadratic", "3"], ["--costs", str(costs), "--steps", "3"]):
        assert cli.main(["elbo", *MODEL, "--quiet", *spec]) == 0

    assert cli.main(["sample", *NET, "-n", "5", "--even", "4", "--out", str(tmp_path / "x.npy")]) == 0
    assert np.load(tmp_path / "x.npy").shape == (5, 1, 4, 4)
    pytest.importorskip("PIL")
    assert cli.main(["sample", *NET, "-n", "5", "--ddim", "--even", "4", "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").stat().st_size > 0

    assert cli.main(["export", "--costs", str(costs), "--steps", "4", "--out", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text()) == [int(t) - 1 for t in best.schedule(4)]
    capsys.readouterr()
    assert cli.main(["export", "--even", "3", "--format", "plain"]) == 2  # even needs T: clear error
    assert cli.main(["export", "--schedule-json", str(tmp_path / "s.json"), "--format", "plain"]) == 0
    assert json.loads(capsys.readouterr().out) == saved["schedule"]


def test_reproduce_pipeline_on_tiny_model(tmp_path):
    from dpddpm.reproduce import reproduce

    model = tiny_model(T=T)
    res = reproduce(
        model,
        discrete_data(6, seed=1),
        discrete_data(5, seed=2),
        tmp_path,
        steps=[2, 4],
        batch_size=16,
        progress=False,
        name="tiny",
    )
    assert [r.K for r in res.rows] == [2, 4]
    for r in res.rows:
        for kind in ("even", "quadratic", "dp"):
            figures = getattr(r, kind)
            assert np.isfinite(figures.test_bpd) and len(figures.schedule) == r.K
        assert r.dp.selection_bpd <= r.even.selection_bpd + 1e-12
    assert res.full.K == T and np.isfinite(res.full.test_bpd)
    t = res.timing
    assert t.cost_matrix_network_calls > 0 and 0 < t.cost_matrix_network_s <= t.cost_matrix_s
    for name in ("results.json", "results.md", "results.png", "costs.npz"):
        assert (tmp_path / name).exists()
    assert "| 4 |" in (tmp_path / "results.md").read_text()
    with pytest.raises(FileExistsError):  # the cost matrix checkpoint is kept; rerunning needs resume
        reproduce(model, discrete_data(6, seed=1), discrete_data(5, seed=2), tmp_path, steps=[2], progress=False)
    again = reproduce(
        model,
        discrete_data(6, seed=1),
        discrete_data(5, seed=2),
        tmp_path,
        steps=[2, 4],
        batch_size=16,
        progress=False,
        resume=True,
        skip_full=True,
    )
    assert again.rows[1].dp.schedule == res.rows[1].dp.schedule
    assert again.full is None


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["schedule", "missing.npz", "--steps", "4"], "not found"),
        (["costs", "--out", "x.npz", "--digits-split", "test"], "exactly one model"),
        (
            [
                "costs",
                "--checkpoint",
                "nope.pt",
                "--preset",
                "cifar10_uncond_50M_500K",
                "--digits-split",
                "test",
                "--out",
                "x.npz",
            ],
            "not found",
        ),
        (["costs", "--pretrained", "digits-hybrid", "--out", "x.npz", "--shard-index", "0"], "go together"),
        (["merge", "out.npz", "nope.npz"], "not found"),
    ],
)
def test_clear_errors(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1


def test_bad_schedule_budget_is_clear(tmp_path, capsys):
    costs = dpddpm.cost_matrix(tiny_model(T=6), discrete_data(3), progress=False)
    costs.save(tmp_path / "c.npz")
    assert cli.main(["schedule", str(tmp_path / "c.npz"), "--steps", "9"]) == 2
    assert "2 <= K <= T" in capsys.readouterr().err


def _run(*args, cwd=None):
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "dpddpm", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_subprocess_help_and_schedule(tmp_path):
    r = _run("--help")
    assert r.returncode == 0 and "costs" in r.stdout and "reproduce" in r.stdout
    for sub in ("costs", "schedule", "elbo", "sample", "export", "merge", "reproduce"):
        r = _run(sub, "--help")
        assert r.returncode == 0 and "usage: dpddpm " + sub in r.stdout, sub
    costs = dpddpm.cost_matrix(tiny_model(T=T), discrete_data(4), progress=False)
    costs.save(tmp_path / "c.npz")
    r = _run("schedule", str(tmp_path / "c.npz"), "--steps", "3", "--start", "free")
    assert r.returncode == 0, r.stderr
    best = dpddpm.optimal_schedules(costs, 3, start="free")
    assert " ".join(map(str, best.schedule(3))) in r.stdout
    r = _run("schedule", str(tmp_path / "missing.npz"), "--steps", "3")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not found" in r.stderr


def _digits_weights_present() -> bool:
    try:
        from importlib import resources

        import dpddpm.digits  # noqa: F401
    except ImportError:
        return False
    return resources.files("dpddpm.digits").joinpath("weights", "digits-hybrid.pt").is_file()


def test_reproduce_digits_hybrid(tmp_path):
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "reproduce",
                "--pretrained",
                "digits-hybrid",
                "--selection",
                "8",
                "--test",
                "8",
                "--steps",
                "2",
                "4",
                "--skip-full",
                "--quiet",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert [r["K"] for r in res["rows"]] == [2, 4] and res["T"] == 4000


def test_elbo_on_ddims_own_stride(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "e.json"
    assert cli.main(["elbo", *MODEL, "--quiet", "--ddim-quad", "4", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["schedule"] == dpddpm.ddim_schedule(T, 4, "quad").tolist()
    assert saved["schedule"][0] < T  # DDIM's stride stops near 0.8 T


def test_fit_variances_then_use_them_everywhere(tmp_path, capsys):
    """costs -> fit-variances -> elbo/sample with --variances, on a bundled model; the CLI's figure is the
    library's frozen-variance ELBO; variances of another model and --variances in reproduce are refused."""
    sel = ["--pretrained", "digits-simple", "--digits-split", "selection", "--limit", "12", "--device", "cpu"]
    costs, variances = tmp_path / "sel.npz", tmp_path / "v.json"
    assert cli.main(["costs", *sel, "--batch-size", "4096", "--quiet", "--out", str(costs)]) == 0
    assert cli.main(["fit-variances", *sel, "--costs", str(costs), "--out", str(variances)]) == 0
    av = dpddpm.AnalyticVariances.load(variances)
    assert av.info.N == 12 and av.info.model_variance == "fixed_small"
    test = ["--pretrained", "digits-simple", "--digits-split", "test", "--limit", "10", "--device", "cpu"]
    out = tmp_path / "e.json"
    assert cli.main(["elbo", *test, "--variances", str(variances), "--even", "8", "--quiet", "--json", str(out)]) == 0
    model = dpddpm.load_pretrained("digits-simple")
    frozen = dpddpm.with_analytic_variances(model, av)
    want = dpddpm.elbo(frozen, dpddpm.digits_split("test")[:10], dpddpm.even_schedule(4000, 8))
    assert json.loads(out.read_text())["bpd"] == pytest.approx(want.bpd, rel=1e-9)
    png = tmp_path / "s.png"
    assert (
        cli.main(
            [
                "sample",
                "--pretrained",
                "digits-simple",
                "--variances",
                str(variances),
                "--even",
                "8",
                "-n",
                "4",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    assert png.stat().st_size > 0
    capsys.readouterr()
    other = ["--pretrained", "digits-hybrid", "--digits-split", "test", "--limit", "4", "--device", "cpu"]
    assert cli.main(["elbo", *other, "--variances", str(variances), "--even", "4", "--quiet"]) == 2
    assert "fitted for another model" in capsys.readouterr().err
    assert (
        cli.main(
            ["reproduce", "--pretrained", "digits-simple", "--variances", str(variances), "--out", str(tmp_path / "r")]
        )
        == 2
    )
    assert "--analytic" in capsys.readouterr().err
