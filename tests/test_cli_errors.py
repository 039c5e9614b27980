"""User errors on the command line: the whole message, naming the file and the fix, exit 2, no traceback.

Internal errors keep their traceback; outputs are checked before any model or data is loaded; recorded metadata
(a schedule's T, a cost matrix's model) is enforced; messages never mislead (no "re-download" for a file that
cannot be opened, no unsafe torch advice, no "--resume" for a folder).
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_cli
import torch
from test_cli import MODEL, NET, T
from toy_models import TinyNet, discrete_data, tiny_diffusers_unet, tiny_model

import dpddpm
from dpddpm import cli
from dpddpm.files import Terminated
from dpddpm.sharding import shard_rows

tiny = test_cli.tiny  # a fixture shared with test_cli

GOLDEN = Path(__file__).parent / "data" / "improved_diffusion_small_golden.pt"
PRESET = ["--preset", "cifar10_uncond_50M_500K"]


def _fails(argv: list, capsys) -> str:
    """Run the CLI in-process; it must exit 2 with one error report and no traceback. Returns stderr."""
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count(f"dpddpm {argv[0]}: error: ") == 1 and "Traceback" not in err, err
    return err


def _run(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return subprocess.run(
        [sys.executable, "-m", "dpddpm", *map(str, args)],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=120,
    )


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model or data fails the test: the command had to refuse first."""

    def work(args):
        raise AssertionError("the command loaded a model or data before checking its arguments")

    monkeypatch.setattr(cli.inputs, "load_model", work)
    monkeypatch.setattr(cli.inputs, "load_data", work)


@pytest.fixture
def tiny_net(monkeypatch):
    """Only the model is the tiny one; data go through the real loaders."""
    model = tiny_model(T=T)
    monkeypatch.setattr(cli.inputs, "load_model", lambda args: model)
    return model


@pytest.fixture
def costs_file(tiny, tmp_path) -> Path:
    model, data = tiny
    return dpddpm.cost_matrix(model, data, progress=False).save(tmp_path / "c.npz")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small improved-diffusion state dict that does not match the CIFAR-10 preset."""
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    torch.save(torch.load(GOLDEN, weights_only=True)["state_dict"], path)
    return path


def _sample_checkpoint(ckpt: Path, tmp_path: Path) -> list:
    return ["sample", "--checkpoint", ckpt, *PRESET, "--device", "cpu", "--even", "4", "--out", tmp_path / "x.npy"]


# --------------------------------------------------------------------------- whole messages, internal errors


def test_checkpoint_mismatch_is_printed_whole(checkpoint, tmp_path, capsys):
    err = _fails(_sample_checkpoint(checkpoint, tmp_path), capsys)
    assert "does not match" in err and "flags tried" in err and "Pass the model's training flags" in err
    assert "missing keys" in err or "shape mismatches" in err
    assert err.count("\n") > 3


@pytest.mark.parametrize(
    "exc",
    [
        KeyError("bug"),
        RuntimeError("bug"),
        AssertionError("bug"),
        ImportError("cannot import name 'x' from 'dpddpm.y'"),
    ],
)
def test_internal_errors_keep_their_traceback(exc, monkeypatch):
    def broken(args):
        raise exc

    monkeypatch.setattr(cli.commands, "cmd_export", broken)
    with pytest.raises(type(exc)):
        cli.main(["export", "--even", "3"])


@pytest.mark.parametrize(
    "exc, message",
    [
        (
            OSError(errno.EROFS, "Read-only file system", "/x"),
            "cannot access /x: Read-only file system (the file system is read-only; choose another path)",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device (the disk is full; free some"),
        (PermissionError(errno.EACCES, "Permission denied", "/x"), "cannot access /x: Permission denied (check its"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), "cannot access /x: No such file"),
        (OSError(errno.EIO, "Input/output error"), None),
        (ImportError("loading diffusers models needs diffusers: pip install 'dpddpm[diffusers]'"), "pip install"),
        (TypeError("bug"), None),
    ],
)
def test_user_error_message(exc, message):
    got = cli.user_error_message(exc)
    assert got is None if message is None else message in got


def test_subprocess_exit_codes_and_no_traceback(checkpoint, tmp_path):
    r = _run(*_sample_checkpoint(checkpoint, tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "flags tried" in r.stderr, r.stderr
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 cut short")
    r = _run("elbo", "--pretrained", "digits-simple", "--device", "cpu", "--data", bad, "--even", "4")
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"{bad} is not a readable .npz file" in r.stderr
    r = _run(
        "sample",
        "--pretrained",
        "digits-simple",
        "--device",
        "cuda",
        "--even",
        "4",
        "--out",
        tmp_path / "x.npy",
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "CUDA is not available" in r.stderr, r.stderr


# --------------------------------------------------------------------------- paths: folders, permissions


@pytest.mark.parametrize(
    "command",
    [
        ["sample", *NET, "--schedule-json", "{dir}", "--out", "{out}.npy"],
        ["schedule", "{dir}", "--steps", "3"],
        ["merge", "{out}.npz", "{dir}"],
    ],
)
def test_a_folder_where_a_file_belongs(command, tiny, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    err = _fails([a.format(dir=folder, out=tmp_path / "out") for a in command], capsys)
    assert f"{folder} is a folder" in err


def test_a_folder_as_checkpoint(tmp_path, capsys):
    err = _fails(_sample_checkpoint(tmp_path, tmp_path), capsys)
    assert f"checkpoint {tmp_path} is a folder" in err


def test_unreadable_checkpoint_is_not_called_truncated(checkpoint, tmp_path, capsys, monkeypatch):
    def denied(path, *args, **kwargs):  # root may read anything: simulate a file it may not
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    err = _fails(_sample_checkpoint(checkpoint, tmp_path), capsys)
    assert f"cannot read checkpoint {checkpoint}: Permission denied" in err
    assert "truncated" not in err and "download" not in err


def test_pickled_objects_get_no_unsafe_advice(tmp_path, capsys):
    ckpt = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), ckpt)  # a whole model: torch suggests weights_only=False, unsafe
    err = _fails(_sample_checkpoint(ckpt, tmp_path), capsys)
    assert "weights_only" not in err and "can still be loaded" not in err and "download" not in err
    assert "torch.nn.modules.linear.Linear" in err and "plain state_dict" in err


def test_truncated_checkpoint_says_so(checkpoint, tmp_path, capsys):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(checkpoint.read_bytes()[:1000])
    assert "truncated or corrupt" in _fails(_sample_checkpoint(cut, tmp_path), capsys)


def test_unreadable_data_and_schedule_files(tiny_net, tmp_path, capsys, monkeypatch):
    data, sched = tmp_path / "x.npz", tmp_path / "s.json"
    np.savez(data, data=np.zeros((2, 1, 4, 4), np.uint8))
    sched.write_text("[12, 1]")
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):  # root may read anything: simulate files it may not
        if str(file) in (str(data), str(sched)):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: guarded_open(self).read())
    err = _fails(["elbo", "--data", data, "--even", "4"], capsys)
    assert f"cannot read .npz file {data}: Permission denied" in err
    err = _fails(["elbo", "--digits-split", "test", "--schedule-json", sched], capsys)
    assert f"cannot access {sched}: Permission denied (check its permissions" in err


# --------------------------------------------------------------------------- outputs, checked before the work


@pytest.mark.parametrize(
    "command",
    [
        ["sample", *NET, "--even", "4", "--out", "{out}.npy"],
        ["reproduce", *NET, "--out", "{out}"],
        ["costs", *MODEL, "--out", "{out}.npz"],
        ["elbo", *MODEL, "--even", "4", "--json", "{out}.json"],
        ["schedule", "{missing}", "--steps", "3", "--json", "{out}.json"],
        ["export", "--costs", "{missing}", "--steps", "3", "--out", "{out}.json"],
        ["merge", "{out}.npz", "{missing}"],
    ],
)
def test_unwritable_outputs_are_refused_before_the_work(command, no_work, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    err = _fails([a.format(out=blocker / "sub" / "out", missing=tmp_path / "missing.npz") for a in command], capsys)
    assert f"cannot write {blocker / 'sub' / 'out'}" in err and f"{blocker} is a file, not a folder" in err


def test_output_without_permission(no_work, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)  # root passes every real check
    err = _fails(["sample", *NET, "--even", "4", "--out", tmp_path / "x.npy"], capsys)
    assert f"no permission to create files in {tmp_path}" in err


@pytest.mark.parametrize(
    "command",
    [
        ["elbo", *MODEL, "--even", "4", "--json", "{dir}"],
        ["sample", *NET, "--even", "4", "--out", "{dir}.npy"],
        ["reproduce", *NET, "--out", "{file}"],
    ],
)
def test_outputs_of_the_wrong_kind(command, no_work, tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d.npy").mkdir()
    (tmp_path / "f").write_text("a file")
    err = _fails([a.format(dir=tmp_path / "d", file=tmp_path / "f") for a in command], capsys)
    assert "is a folder; give a file name" in err or "is a file; give a folder" in err


@pytest.mark.parametrize("name", ["results", "c.npz"])
def test_costs_into_a_folder_names_the_folder_not_resume(name, no_work, tmp_path, capsys):
    folder = tmp_path / name
    folder.mkdir()
    err = _fails(["costs", *MODEL, "--out", folder], capsys)
    assert f"the output {folder} is a folder; give a file name, e.g. {folder / 'costs.npz'}" in err
    assert "--resume" not in err


def test_sample_refuses_a_bad_suffix_before_sampling(no_work, tmp_path, capsys):
    assert "must end in .png or .npy" in _fails(["sample", *NET, "--even", "4", "--out", tmp_path / "x.jpg"], capsys)


def test_costs_prints_the_file_it_wrote(tiny, tmp_path, capsys):
    assert cli.main(["costs", *MODEL, "--quiet", "--out", str(tmp_path / "costs")]) == 0
    assert f"wrote {tmp_path / 'costs.npz'}: " in capsys.readouterr().out
    assert (tmp_path / "costs.npz").exists()


def test_cuda_without_cuda_is_refused_before_loading(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dpddpm.digits, "load_pretrained", lambda *a, **k: pytest.fail("loaded the model"))
    err = _fails(
        ["sample", "--pretrained", "digits-simple", "--device", "cuda", "--even", "4", "--out", tmp_path / "x.npy"],
        capsys,
    )
    assert "--device cuda: CUDA is not available" in err and "--device cpu" in err


# --------------------------------------------------------------------------- corrupt files


@pytest.mark.parametrize(
    "weights, needle",
    [(None, "digits-simple.pt is missing"), (b"version https://git-lfs.github.com/spec/v1\n", "cannot be read")],
)
def test_broken_install_says_reinstall(weights, needle, tmp_path, capsys, monkeypatch):
    from importlib import resources

    (tmp_path / "weights").mkdir()
    card = resources.files("dpddpm.digits").joinpath("weights", "digits-simple.json").read_text()
    (tmp_path / "weights" / "digits-simple.json").write_text(card)
    if weights is not None:  # e.g. a Git LFS pointer checked out in place of the weights
        (tmp_path / "weights" / "digits-simple.pt").write_bytes(weights)
    monkeypatch.setattr(resources, "files", lambda package: tmp_path)
    err = _fails(
        ["sample", "--pretrained", "digits-simple", "--device", "cpu", "--even", "4", "--out", tmp_path / "x.npy"],
        capsys,
    )
    assert needle in err and "reinstall dpddpm" in err


def _corrupt_npz(tmp_path: Path) -> tuple[Path, list]:
    np.savez(tmp_path / "x.npz", data=np.zeros((8, 1, 4, 4), np.uint8))
    blob = (tmp_path / "x.npz").read_bytes()
    (tmp_path / "x.npz").write_bytes(blob[: len(blob) // 2])
    return tmp_path / "x.npz", ["--data", tmp_path / "x.npz"]


def _corrupt_png(tmp_path: Path) -> tuple[Path, list]:
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "000.png").write_bytes(b"garbage, not a PNG" * 4)
    return tmp_path / "pngs" / "000.png", ["--data", tmp_path / "pngs"]


def _corrupt_cifar(tmp_path: Path) -> tuple[Path, list]:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage, not a pickle")
    return tmp_path / "cifar-10-batches-py" / "test_batch", ["--data", tmp_path, "--split", "test"]


@pytest.mark.parametrize(
    "make, fix", [(_corrupt_npz, "np.savez"), (_corrupt_png, "remove it"), (_corrupt_cifar, "cifar-10-python.tar.gz")]
)
def test_corrupt_data_files(make, fix, tiny_net, tmp_path, capsys):
    bad, data_args = make(tmp_path)
    err = _fails(["elbo", *data_args, "--even", "4"], capsys)
    assert f"{bad} is not a readable" in err and "truncated or corrupt" in err and fix in err


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{broken", "is not valid JSON (Expecting property name"),
        ('{"K": 2}', "holds no schedule"),
        ('["12", "1"]', "holds no schedule"),
        ('{"schedule": [12, 6, 6, 1]}', "strictly decreasing"),
    ],
)
def test_bad_schedule_json(text, needle, tiny, tmp_path, capsys):
    (tmp_path / "s.json").write_text(text)
    err = _fails(["elbo", *MODEL, "--schedule-json", tmp_path / "s.json"], capsys)
    assert f"schedule file {tmp_path / 's.json'}" in err and needle in err


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory) -> Path:
    diffusers = pytest.importorskip("diffusers")
    folder = tmp_path_factory.mktemp("pipe")
    tiny_diffusers_unet().save_pretrained(folder / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=10).save_pretrained(folder / "scheduler")
    return folder


def _break_unet_config(folder: Path) -> str:
    (folder / "unet" / "config.json").write_text("{broken")
    return f"cannot load the UNet2DModel in {folder / 'unet'}"


def _remove_weights(folder: Path) -> str:
    for f in (folder / "unet").glob("diffusion_pytorch_model.*"):
        f.unlink()
    return f"cannot load the UNet2DModel in {folder / 'unet'}"


def _break_scheduler(folder: Path) -> str:
    (folder / "scheduler" / "scheduler_config.json").write_text("[1, 2")
    return f"scheduler configuration {folder / 'scheduler' / 'scheduler_config.json'} is not valid JSON"


def _mismatch_weights(folder: Path) -> str:
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps(dict(config, block_out_channels=[32, 64])))
    return f"the weights in {folder / 'unet'} do not match its config.json"


@pytest.mark.parametrize("damage", [_break_unet_config, _remove_weights, _break_scheduler, _mismatch_weights])
def test_broken_diffusers_folder(damage, diffusers_folder, tmp_path, capsys):
    folder = tmp_path / "pipe"
    shutil.copytree(diffusers_folder, folder)
    needle = damage(folder)
    err = _fails(
        ["sample", "--diffusers", folder, "--device", "cpu", "--even", "4", "--out", tmp_path / "x.npy"], capsys
    )
    assert needle in err


# --------------------------------------------------------------------------- merge


def _complete(tmp_path: Path, name: str, seed: int) -> Path:
    costs = dpddpm.cost_matrix(tiny_model(T=T), discrete_data(4, seed=seed), progress=False)
    return costs.save(tmp_path / name)


@pytest.mark.parametrize(
    "argv", [["a.npz", "a.npz", "b.npz"], ["a", "b.npz", "a.npz"], ["sub/../a.npz", "b.npz", "{tmp}/a.npz"]]
)
def test_merge_refuses_to_overwrite_an_input(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    a, _ = _complete(tmp_path, "a.npz", 1), _complete(tmp_path, "b.npz", 2)
    before = a.read_bytes()
    err = _fails(["merge", *(x.format(tmp=tmp_path) for x in argv)], capsys)
    assert "is also an input" in err and "forget the OUT argument" in err
    assert a.read_bytes() == before


def test_merge_with_a_forgotten_out_says_so(tmp_path, capsys):
    model, data = tiny_model(T=T), discrete_data(4)
    shards = [
        dpddpm.cost_matrix(model, data, rows=shard_rows(T, i, 2), progress=False).save(tmp_path / f"c.rank{i}.npz")
        for i in range(2)
    ]
    before = shards[0].read_bytes()
    err = _fails(["merge", *shards], capsys)  # `dpddpm merge c.rank*.npz`: OUT is the first shard
    assert "rows are missing" in err and f"{shards[0]} exists and is not one of the parts" in err
    assert "forget the OUT argument" in err and shards[0].read_bytes() == before


def test_merge_of_data_shards_is_not_called_same_data(tmp_path, capsys):
    a, b = _complete(tmp_path, "a.npz", 1), _complete(tmp_path, "b.npz", 2)  # same N, other images
    assert cli.main(["merge", str(tmp_path / "m.npz"), str(a), str(b)]) == 0
    assert dpddpm.CostMatrix.load(tmp_path / "m.npz").info.N == 8
    assert "twice" in _fails(["merge", tmp_path / "m2.npz", a, a], capsys)  # one shard twice: the library says so


# --------------------------------------------------------------------------- recorded metadata


def test_schedule_json_for_another_T(tiny, tmp_path, capsys):
    (tmp_path / "s.json").write_text(json.dumps({"T": 99, "K": 3, "schedule": [12, 6, 1]}))
    err = _fails(["elbo", *MODEL, "--schedule-json", tmp_path / "s.json"], capsys)
    assert "made for T = 99, but the model has T = 12" in err


def _other_costs(tmp_path: Path, model) -> Path:
    return dpddpm.cost_matrix(model, discrete_data(6), progress=False).save(tmp_path / "other.npz")


def _other_weights():
    model = tiny_model(T=T)
    model.net = TinyNet(1, learned=True, seed=1)
    return model


@pytest.mark.parametrize(
    "other, needle",
    [
        (lambda: tiny_model(T=T, variance="fixed_large"), "variance: 'fixed_large' in the file, 'learned_range' for"),
        (lambda: tiny_model(T=T, clip=False), "clip_denoised: False in the file, True for the model"),
        (_other_weights, "weights_fingerprint: "),
    ],
)
def test_cost_matrix_of_another_model(other, needle, tiny, tmp_path, capsys):
    path = _other_costs(tmp_path, other())
    for command in (["elbo", *MODEL], ["sample", *NET, "--out", tmp_path / "x.npy"]):
        err = _fails([*command, "--costs", path, "--steps", "4"], capsys)
        assert f"the cost matrix {path} was computed for another model" in err and needle in err
        assert f"dpddpm schedule {path} --steps K --json S.json" in err
    # the way out it names works
    assert cli.main(["schedule", str(path), "--steps", "4", "--json", str(tmp_path / "s.json")]) == 0
    assert cli.main(["elbo", *MODEL, "--quiet", "--schedule-json", str(tmp_path / "s.json")]) == 0


# --------------------------------------------------------------------------- schedule, in-sample ELBO, signals


def test_schedule_reports_no_stderr_and_points_to_in_sample(costs_file, tmp_path, capsys):
    assert cli.main(["schedule", str(costs_file), "--steps", "4", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "±" not in out and "--in-sample" in out and "bits/dim in-sample" in out
    assert "stderr" not in json.loads((tmp_path / "s.json").read_text())


def test_elbo_in_sample(costs_file, tiny, tmp_path, capsys):
    model, data = tiny
    assert (
        cli.main(
            [
                "elbo",
                *MODEL,
                "--quiet",
                "--costs",
                str(costs_file),
                "--steps",
                "4",
                "--in-sample",
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    assert "in-sample" in capsys.readouterr().out
    e = json.loads((tmp_path / "e.json").read_text())
    costs = dpddpm.CostMatrix.load(costs_file)
    assert e["in_sample"] and e["bpd"] == pytest.approx(dpddpm.schedule_bpd(costs, e["schedule"]), rel=1e-6)
    assert np.isfinite(e["stderr"]) and e["stderr"] > 0
    assert "--in-sample needs --costs" in _fails(["elbo", *MODEL, "--even", "4", "--in-sample"], capsys)
    other = dpddpm.cost_matrix(model, discrete_data(6, seed=5), progress=False).save(tmp_path / "other.npz")
    _fails(["elbo", *MODEL, "--costs", other, "--steps", "4", "--in-sample"], capsys)  # not the matrix's images


@pytest.mark.parametrize(
    "exc, code, what", [(Terminated(), 143, "terminated (SIGTERM)"), (KeyboardInterrupt(), 130, "interrupted")]
)
def test_stopped_runs_say_where_the_rows_are(exc, code, what, tiny, tmp_path, capsys, monkeypatch):
    def stopped(model, data, *, checkpoint, **kwargs):
        dpddpm.CostMatrix(kl=np.ones((T + 1, T + 1)), decoder=np.ones(T + 1), prior=np.ones(T + 1)).save(checkpoint)
        raise exc

    monkeypatch.setattr(dpddpm.checkpoint, "cost_matrix", stopped)
    out = tmp_path / "c.npz"
    assert cli.main(["costs", *MODEL, "--quiet", "--out", str(out)]) == code
    assert capsys.readouterr().err == (
        f"dpddpm costs: {what}; finished rows are saved in {out}; continue with --resume\n"
    )


def test_out_of_gpu_memory_says_lower_the_batch_size(tiny, tmp_path, capsys, monkeypatch):
    import dpddpm.checkpoint

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(dpddpm.checkpoint, "cost_matrix", out_of_memory)
    assert cli.main(["costs", *MODEL, "--quiet", "--out", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err
    assert "lower --batch-size" in err and "Traceback" not in err


def test_merge_names_the_files_that_clash(tiny, tmp_path, capsys):
    a = tmp_path / "a.npz"
    assert cli.main(["costs", *MODEL, "--quiet", "--out", str(a)]) == 0
    assert cli.main(["merge", str(tmp_path / "m.npz"), str(a), str(a)]) == 2
    assert f"in {a}, {a}" in capsys.readouterr().err


def test_schedule_of_a_non_zip_file_gives_no_unpickling_advice(tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x80\x04not a zip at all")
    assert cli.main(["schedule", str(junk), "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "not an .npz archive" in err and "allow_pickle" not in err
