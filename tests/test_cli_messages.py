"""Issue 18's crashes and messages: each user error exits 2 with one message that names the file and the fix (no
traceback), misleading messages say what is wrong, and options are never ignored silently."""

from __future__ import annotations

import errno
import io
import json
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from toy_models import discrete_data, tiny_model

import dpddpm
from dpddpm import cli
from dpddpm.analytic import fit_analytic_variances

try:  # diffusers' log handler takes the stderr of its first use: make that the session's, not one test's capture
    import diffusers

    diffusers.utils.logging.get_logger("diffusers")
except ImportError:
    pass

T = 12
NET = ["--pretrained", "tiny", "--device", "cpu"]
MODEL = [*NET, "--digits-split", "test"]


@pytest.fixture
def model(monkeypatch):
    """The tiny model behind every model option (--variances still goes through the real loader)."""
    m = tiny_model(T=T)
    monkeypatch.setattr(cli.inputs, "_load_base_model", lambda args: m)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return m


@pytest.fixture
def data(monkeypatch):
    x = discrete_data(6)
    real = cli.inputs.load_data
    monkeypatch.setattr(cli.inputs, "load_data", lambda args: x if args.data is None else real(args))
    return x


@pytest.fixture
def costs_file(model, data, tmp_path) -> Path:
    return dpddpm.cost_matrix(model, data, progress=False).save(tmp_path / "c.npz")


def _fails(argv: list, capsys, *names) -> str:
    """The CLI exits 2 with one error report, no traceback, naming each of ``names``. Returns stderr."""
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count(f"dpddpm {argv[0]}: error: ") == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in err, err
    return err


def _argparse_refuses(argv: list, capsys, *words) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


def _npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name + ".npy", raw)
    return path


def _npy_header(shape: tuple, dtype: str = "<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height pixels, with a tiny (invalid) body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)))
    return path


# ------------------------------------------------------------------------------ crashes that are user errors


def test_cost_file_with_an_extra_array(costs_file, tmp_path, capsys):
    with np.load(costs_file) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(tmp_path / "extra.npz", surprise=np.zeros(3), **arrays)
    _fails(["schedule", tmp_path / "extra.npz", "--steps", "3"], capsys, "extra.npz", "surprise", "recompute")


def test_cost_file_meta_T_smaller_than_its_packed_rows(costs_file, tmp_path, capsys):
    with np.load(costs_file) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    np.savez(tmp_path / "t3.npz", meta=np.array(json.dumps({**meta, "T": 3})), **arrays)
    _fails(["schedule", tmp_path / "t3.npz", "--steps", "3"], capsys, "t3.npz")


def test_schedule_file_with_a_31_digit_time(tmp_path, capsys):
    (tmp_path / "s.json").write_text("[1000000000000000000000000000000, 1]")
    _fails(["export", "--schedule-json", tmp_path / "s.json"], capsys, "s.json")


@pytest.mark.parametrize("doc", ["null", "[1, 2]", "3", '{"format": "dpddpm-analytic-variances", "T": 12}'])
def test_variances_files_that_are_not_variances(doc, model, tmp_path, capsys):
    (tmp_path / "v.json").write_text(doc)
    _fails(["sample", *NET, "--variances", tmp_path / "v.json", "--even", "3", "--out", tmp_path / "x.npy"], capsys,
           "v.json")  # fmt: skip


def test_variances_without_mse_or_decoder_variance(model, data, costs_file, tmp_path, capsys):
    good = json.loads(fit_analytic_variances(model, data, dpddpm.CostMatrix.load(costs_file)).save(tmp_path / "v.json")
                      .read_text())  # fmt: skip
    for key in ("mse", "decoder_log_variance"):
        (tmp_path / "v.json").write_text(json.dumps({k: v for k, v in good.items() if k != key}))
        argv = ["sample", *NET, "--variances", tmp_path / "v.json", "--even", "3", "--out", tmp_path / "x.npy"]
        _fails(argv, capsys, "v.json", "fit-variances")


def test_diffusers_scheduler_with_a_string_for_a_count(tmp_path, capsys):
    pytest.importorskip("diffusers")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": "abc"}))
    argv = ["sample", "--diffusers", tmp_path / "m", "--device", "cpu", "--even", "3", "--out", tmp_path / "x.npy"]
    _fails(argv, capsys, "scheduler_config.json", "num_train_timesteps")


class _BadReconstruct:
    """Pickles as a call of numpy's (allowed) array reconstructor with arguments it refuses (a TypeError)."""

    def __reduce__(self):
        return np.ndarray.__reduce__(np.zeros(1))[0], ("not a type", (0,), b"b")


def test_cifar_batch_with_an_object_array(tmp_path, capsys, model):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _BadReconstruct()}, protocol=4))
    _fails(["elbo", *NET, "--data", folder, "--split", "test", "--even", "3"], capsys, "test_batch")


def test_npz_declaring_a_trillion_elements_is_refused_unread(tmp_path, capsys, model):
    bomb = _npz(tmp_path / "bomb.npz", {"data": _npy_header((10**12,), "|u1") + b"\0" * 64})
    _fails(["elbo", *NET, "--data", bomb, "--even", "3"], capsys, "bomb.npz")
    costs = _npz(tmp_path / "cbomb.npz", {"meta": _npy_header((10**12,)) + b"\0" * 64})
    _fails(["schedule", costs, "--steps", "3"], capsys, "cbomb.npz")


def test_json_nested_100000_deep(tmp_path, capsys):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    _fails(["export", "--schedule-json", tmp_path / "deep.json"], capsys, "deep.json", "nested")


def test_a_20000_by_20000_png_is_refused_before_decoding(tmp_path, capsys, model):
    (tmp_path / "pngs").mkdir()
    _png_header_only(tmp_path / "pngs" / "huge.png", 20000, 20000)
    _fails(["elbo", *NET, "--data", tmp_path / "pngs", "--even", "3"], capsys, "huge.png")


def test_sample_draws_in_batches_of_batch_size(model, tmp_path, monkeypatch):
    sizes = []
    real = dpddpm.sampling.sample

    def recording(model, schedule, n, generator=None, **kw):
        sizes.append(n)
        return real(model, schedule, n, generator, **kw)

    monkeypatch.setattr(dpddpm.sampling, "sample", recording)
    out = tmp_path / "x.npy"
    assert cli.main(["sample", *NET, "--even", "3", "-n", "10", "--batch-size", "4", "--out", str(out)]) == 0
    assert sizes == [4, 4, 2] and np.load(out).shape == (10, 1, 4, 4)


def test_sample_refuses_an_output_larger_than_the_disk(model, tmp_path, capsys):
    argv = ["sample", *NET, "--even", "3", "-n", str(10**15), "--out", tmp_path / "x.npy"]
    _fails(argv, capsys, "x.npy", "GiB")
    _fails(["sample", *NET, "--even", "3", "-n", "100000", "--out", tmp_path / "x.png"], capsys, ".npy")


def test_broken_pipe_is_quiet(costs_file):
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpddpm", "schedule", str(costs_file), "--steps", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the first line is written (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


# ------------------------------------------------------------------------ misleading messages, ignored options


def test_reproduce_analytic_resume_checks_the_matrix_first(model, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    old = dpddpm.cost_matrix(model, data, progress=False)
    old.mse = old.mse_stderr = None  # a matrix from before mse existed
    old.save(out / "costs.npz")

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the matrix was checked")

    monkeypatch.setattr(cli.inputs, "_load_base_model", no_work)
    err = _fails(["reproduce", *NET, "--analytic", "--resume", "--out", out], capsys, "costs.npz", "--analytic")
    assert "mse" in err


def test_seeds_are_checked_alike_everywhere(capsys):
    for command in (["elbo", *MODEL, "--even", "3"], ["costs", *MODEL, "--out", "c.npz"]):
        _argparse_refuses([*command, "--seed", str(10**23)], capsys, "seed")
        _argparse_refuses([*command, "--seed", "1e23"], capsys, "seed")


def test_replaying_the_wrong_matrix_says_what_to_add(model, data, tmp_path, capsys):
    costs = dpddpm.cost_matrix(model, data, progress=False)
    variances = fit_analytic_variances(model, data, costs)
    vfile = variances.save(tmp_path / "v.json")
    analytic = dpddpm.cost_matrix(dpddpm.with_analytic_variances(model, variances), data, progress=False)
    afile = analytic.save(tmp_path / "a.npz")
    err = _fails(["elbo", *MODEL, "--costs", afile, "--steps", "3", "--in-sample"], capsys, "a.npz")
    assert "--variances FILE" in err and "--schedule-json" not in err
    err = _fails(["fit-variances", *MODEL, "--costs", afile, "--out", tmp_path / "w.json"], capsys, "a.npz")
    assert "--schedule-json" not in err
    argv = ["elbo", *MODEL, "--costs", afile, "--steps", "3", "--in-sample", "--variances", vfile]
    assert cli.main([str(a) for a in argv]) == 0


def test_a_full_disk_names_the_file_and_resume(model, data, tmp_path, capsys, monkeypatch):
    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dpddpm.CostMatrix, "save", full)
    out = tmp_path / "c.npz"
    _fails(["costs", *MODEL, "--quiet", "--out", out], capsys, "c.npz", "--resume", "disk is full")


def test_ddim_with_variances_is_refused(tmp_path, capsys):
    argv = ["sample", *NET, "--ddim", "--variances", "v.json", "--even", "3", "--out", tmp_path / "x.npy"]
    _fails(argv, capsys, "--variances")


def test_merge_of_one_valid_hand_built_file(tmp_path, capsys):
    hand = dpddpm.CostMatrix(kl=np.tril(np.ones((6, 6)), -1), decoder=np.ones(6), prior=np.ones(6))
    path = hand.save(tmp_path / "hand.npz")
    assert cli.main(["merge", str(tmp_path / "m.npz"), str(path)]) == 0, capsys.readouterr().err
    np.testing.assert_array_equal(dpddpm.CostMatrix.load(tmp_path / "m.npz").kl, hand.kl)


def test_an_old_file_is_not_called_another_model(model, data, tmp_path, capsys):
    a = dpddpm.cost_matrix(model, data, progress=False, rows=range(1, 7)).save(tmp_path / "a.npz")
    old = dpddpm.cost_matrix(model, data, progress=False, rows=range(7, T + 1))
    old.info = old.info.replace(weights_fingerprint=None)
    b = old.save(tmp_path / "b.npz")
    err = _fails(["merge", tmp_path / "m.npz", a, b], capsys, "b.npz", "not recorded")
    assert "another model" not in err


def test_in_sample_with_another_seed_is_refused(costs_file, data, capsys):
    _fails(["elbo", *MODEL, "--costs", costs_file, "--steps", "3", "--in-sample", "--seed", "5"], capsys, "--seed")
    assert cli.main(["elbo", *MODEL, "--costs", str(costs_file), "--steps", "3", "--in-sample", "--seed", "0"]) == 0


def test_elbo_json_writes_null_for_an_undefined_stderr(model, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.inputs, "load_data", lambda args: discrete_data(1))
    out = tmp_path / "e.json"
    assert cli.main(["elbo", *MODEL, "--even", "3", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["stderr"] is None and "NaN" not in out.read_text()


def test_pickled_diffusers_weights_say_why(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    import torch
    from toy_models import tiny_diffusers_unet

    folder = tmp_path / "m"
    tiny_diffusers_unet().save_pretrained(folder, safe_serialization=False)
    diffusers.DDPMScheduler(num_train_timesteps=10).save_pretrained(folder)
    torch.save({"x": Path("not a tensor")}, folder / "diffusion_pytorch_model.bin")
    argv = ["sample", "--diffusers", folder, "--device", "cpu", "--even", "3", "--out", tmp_path / "x.npy"]
    # a process of its own: diffusers logs to the stderr it saw first
    proc = subprocess.run(
        [sys.executable, "-m", "dpddpm", *map(str, argv)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "could run code" in proc.stderr and "safetensors" in proc.stderr
    assert "weights_only=False" not in proc.stderr and "weights_only` set to `False" not in proc.stderr


@pytest.mark.parametrize("every", ["-5", "nan", "inf"])
def test_save_every_must_be_a_finite_interval(every, capsys):
    _argparse_refuses(["costs", *MODEL, "--out", "c.npz", "--save-every", every], capsys, "save-every")


def test_a_damaged_cost_value_is_caught_by_the_checksum(costs_file, tmp_path, capsys):
    with np.load(costs_file) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["kl_planes"] = arrays["kl_planes"].copy()
    arrays["kl_planes"][6, 0] ^= 1  # a flipped bit of the first cost's mantissa: a plausible value, no range check
    np.savez(tmp_path / "flipped.npz", **arrays)
    _fails(["schedule", tmp_path / "flipped.npz", "--steps", "3"], capsys, "flipped.npz", "checksum")
