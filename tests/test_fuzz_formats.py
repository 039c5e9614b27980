"""Every file format dpddpm reads, fuzzed (hypothesis): valid files are mutated (types, shapes, missing and extra
fields, huge and non-finite values, nesting, truncation, flipped bytes) and handed to the command line.

The command must either succeed with a correct result or exit 2 with one message that names the file; it must
never show a traceback, and it must never change its input file. The main API entry points given bad arguments
raise a clear ValueError or TypeError and leave the caller's objects untouched.

Formats: cost ``.npz`` (format 2, and format 1 with full matrices), its run-info ``meta``, analytic-variances
JSON, schedule JSON, PNG folders, CIFAR-10 python batches, ``.npz`` image data, improved-diffusion checkpoints,
and a cost checkpoint resumed with ``--resume``. Examples are derandomized and few, so the file runs in well
under a minute on 2 cores.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toy_models import TinyNet, discrete_data, tiny_model

import dpddpm
from dpddpm import cli
from dpddpm.analytic import fit_analytic_variances

T = 6
NET = ["--pretrained", "tiny", "--device", "cpu"]
GOLDEN = Path(__file__).parent / "data" / "improved_diffusion_small_golden.pt"


def examples(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# ------------------------------------------------------------------------------------------- the mutations

#: values a field may be replaced with: wrong types, huge, non-finite, nested
ODD_VALUES = st.sampled_from(
    [None, True, False, "x", "false", "", 2.7, -1, 0, 10**30, 1e308, -1e308, [], [1, 2], {}, {"a": {"b": [1]}}, 3]
)


def _hash(path: Path) -> str:
    """A digest of a file or of every file in a folder, to prove the command changed nothing."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _cli(argv: list, capsys, file: Path) -> tuple[int, str]:
    """Run the command in-process: exit 0, or exit 2 with one message naming ``file``; no traceback ever.

    Returns the exit status and what the command printed."""
    before = _hash(file)
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])  # an internal error would raise here and fail the test
    out, err = capsys.readouterr()
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.count(f"dpddpm {argv[0]}: error: ") == 1 and "Traceback" not in err, err
        assert file.name in err or f"{file.parent.name} " in err, err  # the file, or the folder it is read in
    assert _hash(file) == before, "the command changed its input"
    return code, out


def _bytes_mutation(raw: bytes, data: st.DataObject) -> bytes:
    """Truncate, flip a byte, or append junk."""
    kind = data.draw(st.sampled_from(["truncate", "flip", "append"]))
    if kind == "truncate":
        return raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)))]
    if kind == "append":
        return raw + data.draw(st.binary(min_size=1, max_size=64))
    at = data.draw(st.integers(0, len(raw) - 1))
    return raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]


class RawJSON(str):
    """JSON text to write as it is."""


def _dumps(doc) -> str:
    return doc if isinstance(doc, RawJSON) else json.dumps(doc)


def _json_mutation(doc, data: st.DataObject):
    """A copy of a JSON document with one field (at any depth) deleted, replaced, or added, or nested deeply."""
    doc = copy.deepcopy(doc)
    kind = data.draw(st.sampled_from(["replace", "delete", "add", "nest", "whole"]))
    if kind == "whole":
        return data.draw(ODD_VALUES)
    if kind == "nest":  # as text: Python's own json module cannot build it either
        return RawJSON("[" * 5000 + json.dumps(doc) + "]" * 5000) if data.draw(st.booleans()) else [doc]
    # walk down to a container
    node = doc
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        if not isinstance(node[key], (dict, list)) or not node[key]:
            break
        node = node[key]
    if not isinstance(node, (dict, list)) or not node:
        return data.draw(ODD_VALUES)
    keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
    key = data.draw(st.sampled_from(keys))
    if kind == "delete":
        del node[key]
    elif kind == "add":
        if isinstance(node, dict):
            node[f"extra_{key}"] = data.draw(ODD_VALUES)
        else:
            node.append(data.draw(ODD_VALUES))
    else:
        node[key] = data.draw(ODD_VALUES)
    return doc


def _array_mutation(arrays: dict[str, np.ndarray], data: st.DataObject) -> dict[str, np.ndarray]:
    """One array dropped, added, retyped, reshaped or given odd values."""
    arrays = dict(arrays)
    names = sorted(k for k in arrays if k != "meta")
    name = data.draw(st.sampled_from(names))
    kind = data.draw(st.sampled_from(["drop", "add", "retype", "reshape", "values"]))
    arr = arrays[name]
    if kind == "drop":
        del arrays[name]
    elif kind == "add":
        arrays["extra"] = np.zeros(3)
    elif kind == "retype":
        arrays[name] = arr.astype(data.draw(st.sampled_from(["int8", "float32", "bool", "U3", "complex64"])))
    elif kind == "reshape":
        shape = data.draw(st.sampled_from(["flat", "more", "fewer", "empty"]))
        arrays[name] = {
            "flat": arr.reshape(-1),
            "more": arr[None],
            "fewer": arr.reshape(-1)[: max(arr.size - 1, 0)],
            "empty": arr.reshape(-1)[:0],
        }[shape]
    else:
        if arr.size and arr.dtype.kind in "fiu":
            out = arr.astype(np.float64 if arr.dtype.kind == "f" else arr.dtype).copy().reshape(-1)
            at = data.draw(st.integers(0, arr.size - 1))
            pool = [np.nan, np.inf, -np.inf, 1e300, -1.0, 0.0] if out.dtype.kind == "f" else [-5, 0, 2**40]
            value = data.draw(st.sampled_from(pool))
            fits = out.dtype.kind == "f" or np.iinfo(out.dtype).min <= value <= np.iinfo(out.dtype).max
            out[at] = value if fits else 0
            arrays[name] = out.reshape(arr.shape)
    return arrays


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


# -------------------------------------------------------------------------------------------- the fixtures


@pytest.fixture(scope="module")
def model():
    return tiny_model(T=T)


@pytest.fixture(scope="module")
def data():
    return discrete_data(5)


@pytest.fixture(scope="module")
def costs(model, data):
    return dpddpm.cost_matrix(model, data, progress=False)


@pytest.fixture
def cli_model(model, data, monkeypatch):
    """The tiny model behind every model option; the digits split option gives the tiny data."""
    monkeypatch.setattr(cli.inputs, "_load_base_model", lambda args: model)
    real = cli.inputs.load_data
    monkeypatch.setattr(cli.inputs, "load_data", lambda args: data if args.data is None else real(args))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return model


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _format1(costs: dpddpm.CostMatrix) -> dict[str, np.ndarray]:
    """The arrays of a format-1 file (full matrices, no format_version in meta)."""
    return {
        "meta": np.array(json.dumps(costs.info.as_dict())),
        "kl": costs.kl,
        "decoder": costs.decoder,
        "prior": costs.prior,
        "stderr": costs.stderr,
        "counts": costs.counts,
    }


# ------------------------------------------------------------------------------------------ cost matrices


def _check_schedule_output(path: Path, capsys_out: str) -> None:
    """A `schedule` that succeeded printed the DP's optimum of what the file holds."""
    loaded = dpddpm.CostMatrix.load(path)
    best = dpddpm.optimal_schedules(loaded, 3)
    assert " ".join(map(str, best.schedule(3))) in capsys_out


@examples(30)
@given(data=st.data())
def test_cost_files_both_formats(costs, tmp_path_factory, capsys, data):
    folder = tmp_path_factory.mktemp("c")
    good = costs.save(folder / "good.npz")
    fmt = data.draw(st.sampled_from([1, 2]))
    arrays = _arrays(good) if fmt == 2 else _format1(costs)
    level = data.draw(st.sampled_from(["arrays", "meta", "bytes"]))
    path = folder / "fuzzed.npz"
    if level == "arrays":
        _write_npz(path, _array_mutation(arrays, data))
    elif level == "meta":
        meta = json.loads(str(arrays["meta"]))
        mutated = _json_mutation(meta, data)
        text = _dumps(mutated) if data.draw(st.booleans()) else data.draw(st.sampled_from(["{", "NaN", "x"]))
        _write_npz(path, {**arrays, "meta": np.array(text)})
    else:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path.write_bytes(_bytes_mutation(buf.getvalue(), data))
    code, out = _cli(["schedule", path, "--steps", "3"], capsys, path)
    if code == 0:
        _check_schedule_output(path, out)


@examples(12)
@given(data=st.data())
def test_cost_checkpoints_resumed(cli_model, data, costs, tmp_path_factory, capsys):
    """A damaged checkpoint given to --resume: refused unchanged, or resumed to a complete, loadable matrix."""
    folder = tmp_path_factory.mktemp("r")
    partial = dpddpm.cost_matrix(cli_model, discrete_data(5), progress=False, rows=[1, 2, 3])
    arrays = _arrays(partial.save(folder / "p.npz"))
    path = folder / "c.npz"
    if data.draw(st.booleans()):
        _write_npz(path, _array_mutation(arrays, data))
    else:
        meta = _json_mutation(json.loads(str(arrays["meta"])), data)
        _write_npz(path, {**arrays, "meta": np.array(_dumps(meta))})
    before = _hash(path)
    code = cli.main(["costs", *NET, "--digits-split", "test", "--quiet", "--resume", "--out", str(path)])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 2:
        assert "c.npz" in err and _hash(path) == before
    else:
        resumed = dpddpm.CostMatrix.load(path)
        assert resumed.is_complete
        np.testing.assert_allclose(resumed.kl, costs.kl, rtol=1e-6, equal_nan=True)


# ------------------------------------------------------------------------------------------ JSON formats


@examples(25)
@given(data=st.data())
def test_variances_json(cli_model, data, costs, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("v")
    good = fit_analytic_variances(cli_model, discrete_data(5), costs).save(folder / "good.json")
    path = folder / "v.json"
    doc = json.loads(good.read_text())
    if data.draw(st.integers(0, 4)) == 0:
        path.write_bytes(_bytes_mutation(good.read_bytes(), data))
    else:
        path.write_text(_dumps(_json_mutation(doc, data)))
    out = folder / "x.npy"
    argv = ["sample", *NET, "--variances", path, "--even", "3", "-n", "2", "--out", out]
    if _cli(argv, capsys, path)[0] == 0:
        x = np.load(out)
        assert x.shape == (2, 1, 4, 4) and np.isfinite(x).all()


@examples(30)
@given(data=st.data())
def test_schedule_json(data, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("s")
    doc = data.draw(st.sampled_from([[10, 5, 1], {"T": 12, "K": 3, "start": "T", "bpd": 1.0, "schedule": [10, 5, 1]}]))
    path = folder / "s.json"
    if data.draw(st.integers(0, 4)) == 0:
        path.write_bytes(_bytes_mutation(json.dumps(doc).encode(), data))
    else:
        path.write_text(_dumps(_json_mutation(doc, data)))
    code, out = _cli(["export", "--schedule-json", path, "--format", "plain"], capsys, path)
    if code == 0:
        times = json.loads(out)
        assert times[-1] == 1 and all(a > b for a, b in zip(times, times[1:]))


# ------------------------------------------------------------------------------------------ image data


def _rgb_model(side: int) -> dpddpm.DDPM:
    net = TinyNet(3, learned=False)
    return dpddpm.DDPM(net, dpddpm.NoiseSchedule.cosine(T), "fixed_small", data_shape=(3, side, side), num_bins=256)


@pytest.fixture
def rgb_cli(monkeypatch):
    """A 3-channel model on 8 x 8 images, or 32 x 32 for CIFAR-10, behind every model option."""
    models = {8: _rgb_model(8), 32: _rgb_model(32)}
    monkeypatch.setattr(cli.inputs, "_load_base_model", lambda args: models[32 if "cifar" in str(args.data) else 8])
    return models


def _images(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def _elbo_ok(argv: list, capsys, file: Path, n_expected: int | None = None) -> None:
    code, out = _cli(argv, capsys, file)
    if code == 0:
        assert "bits/dim" in out and "nan" not in out.split("bits/dim")[0].lower()


@examples(25)
@given(data=st.data())
def test_png_folders(rgb_cli, data, tmp_path_factory, capsys):
    from PIL import Image

    folder = tmp_path_factory.mktemp("png") / "imgs"
    folder.mkdir()
    images = _images(3, 8)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i}.png")
    victim = folder / f"{data.draw(st.integers(0, 2))}.png"
    kind = data.draw(st.sampled_from(["bytes", "size", "mode", "empty", "text"]))
    if kind == "bytes":
        victim.write_bytes(_bytes_mutation(victim.read_bytes(), data))
    elif kind == "size":
        Image.fromarray(_images(1, data.draw(st.sampled_from([1, 7, 9, 64])))[0]).save(victim)
    elif kind == "mode":
        mode = data.draw(st.sampled_from(["L", "RGBA", "1", "P", "I;16", "LA"]))
        Image.fromarray(images[0]).convert(mode).save(victim)
    elif kind == "empty":
        victim.write_bytes(b"")
    else:
        victim.write_text("not a png")
    _elbo_ok(["elbo", "--pretrained", "x", "--device", "cpu", "--data", folder, "--even", "3"], capsys, folder)


@examples(25)
@given(data=st.data())
def test_cifar_batches(rgb_cli, data, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    folder.mkdir()
    rows = _images(4, 32).transpose(0, 3, 1, 2).reshape(4, -1)
    batch = {b"data": rows, b"labels": [0, 1, 2, 3]}
    kind = data.draw(st.sampled_from(["bytes", "no_data", "dtype", "shape", "type", "not_dict"]))
    if kind == "no_data":
        del batch[b"data"]
    elif kind == "dtype":
        batch[b"data"] = rows.astype(data.draw(st.sampled_from(["int64", "float32", "uint16"])))
    elif kind == "shape":
        batch[b"data"] = data.draw(st.sampled_from([rows[:, :100], rows.reshape(-1), rows[None], rows[:0]]))
    elif kind == "type":
        batch[b"data"] = data.draw(st.sampled_from([[1, 2, 3], "text", None, 5]))
    raw = pickle.dumps([1, 2] if kind == "not_dict" else batch, protocol=4)
    path = folder / "test_batch"
    path.write_bytes(_bytes_mutation(raw, data) if kind == "bytes" else raw)
    _elbo_ok(["elbo", "--pretrained", "x", "--device", "cpu", "--data", folder.parent / "cifar-10-batches-py",
              "--split", "test", "--even", "3"], capsys, path)  # fmt: skip


@examples(30)
@given(data=st.data())
def test_npz_image_data(rgb_cli, data, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("npz")
    path = folder / "imgs.npz"
    arrays = {"data": _images(4, 8)}
    level = data.draw(st.sampled_from(["arrays", "bytes", "keys"]))
    if level == "arrays":
        arrays = _array_mutation({**arrays, "meta": np.zeros(1)}, data)
        arrays.pop("meta", None)
        _write_npz(path, arrays)
    elif level == "keys":
        _write_npz(path, {"other": arrays["data"], "more": arrays["data"]})
    else:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path.write_bytes(_bytes_mutation(buf.getvalue(), data))
    _elbo_ok(["elbo", "--pretrained", "x", "--device", "cpu", "--data", path, "--even", "3"], capsys, path)


# ------------------------------------------------------------------------------- improved-diffusion weights


@pytest.fixture(scope="module")
def golden_ckpt(tmp_path_factory):
    golden = torch.load(GOLDEN, weights_only=True)
    path = tmp_path_factory.mktemp("ckpt") / "golden.pt"
    torch.save(golden["state_dict"], path)
    return path, [f"--flag={k}={v}" for k, v in golden["flags"].items()]


@examples(10)
@given(data=st.data())
def test_improved_diffusion_checkpoints(golden_ckpt, data, tmp_path_factory, capsys):
    good, flags = golden_ckpt
    path = tmp_path_factory.mktemp("ck") / "model.pt"
    kind = data.draw(st.sampled_from(["bytes", "state_dict"]))
    if kind == "bytes":
        path.write_bytes(_bytes_mutation(good.read_bytes(), data))
    else:
        state = torch.load(good, weights_only=True)
        key = data.draw(st.sampled_from(sorted(state)))
        change = data.draw(st.sampled_from(["drop", "reshape", "dtype", "nan"]))
        if change == "drop":
            del state[key]
        elif change == "reshape":
            state[key] = state[key].reshape(-1)[:-1] if state[key].numel() > 1 else torch.zeros(2)
        elif change == "dtype":
            state[key] = state[key].to(torch.int32)
        else:
            state[key] = torch.full_like(state[key], float("nan")) if state[key].is_floating_point() else state[key]
        torch.save(state, path)
    out = path.with_suffix(".npy")
    argv = ["sample", "--checkpoint", path, *flags, "--device", "cpu", "--even", "3", "-n", "1", "--out", out]
    if _cli(argv, capsys, path)[0] == 0:
        assert np.isfinite(np.load(out)).all()


# ------------------------------------------------------------------------------------------- the API


BAD_ARGUMENTS = {
    "batch_size": [0, -1, 2.5, "8", None, True],
    "seed": [-1, 2**64, 1.5, "0", None],
    "device": ["meta", "nonsense", 3],
    "schedule": [[T, T, 1], [T + 1, 1], [3, 2], [], [[6, 1]], ["6", "1"], [10**30, 1], [6.5, 1]],
    "data": ["shape", "nan", "range", "list", "empty"],
    "model": [None, "model", 3],
}


def _bad_data(kind: str, data: torch.Tensor):
    return {
        "shape": data[:, :, :2],
        "nan": data.clone().fill_(float("nan")),
        "range": data * 3,
        "list": [[1, 2]],
        "empty": data[:0],
    }[kind]


@examples(40)
@given(which=st.sampled_from(["elbo", "in_sample_elbo", "cost_matrix", "sample", "fit", "analytic"]), data=st.data())
def test_api_entry_points_refuse_bad_arguments_and_touch_nothing(which, data, model, costs):
    images = discrete_data(5)
    argument = data.draw(st.sampled_from(sorted(BAD_ARGUMENTS)))
    if which == "sample" and argument in ("data",):
        argument = "batch_size"  # sample takes n instead
    bad = data.draw(st.sampled_from(BAD_ARGUMENTS[argument]))
    args = {"model": model, "data": images, "schedule": [T, 3, 1], "batch_size": 4, "seed": 0, "device": "cpu"}
    args[argument] = _bad_data(bad, images) if argument == "data" else bad
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    images_before, costs_before = images.clone(), costs.kl.copy()
    variances = fit_analytic_variances(model, images, costs)

    def call():
        m, x, s, b, seed, dev = (args[k] for k in ("model", "data", "schedule", "batch_size", "seed", "device"))
        if which == "elbo":
            dpddpm.elbo(m, x, s, batch_size=b, seed=seed, device=dev)
        elif which == "in_sample_elbo":
            dpddpm.in_sample_elbo(m, x, costs, s, batch_size=b, device=dev)
        elif which == "cost_matrix":
            dpddpm.cost_matrix(m, x, batch_size=b, seed=seed, device=dev, progress=False)
        elif which == "sample":
            dpddpm.sample(m, s, b if argument == "batch_size" else 2, torch.Generator().manual_seed(0), device=dev)
        elif which == "fit":
            fit_analytic_variances(m, x, costs, batch_size=b, device=dev)
        else:
            dpddpm.analytic_costs(costs, variances, m, x, batch_size=b)

    relevant = {
        "elbo": {"model", "data", "schedule", "batch_size", "seed", "device"},
        "in_sample_elbo": {"model", "data", "schedule", "batch_size", "device"},
        "cost_matrix": {"model", "data", "batch_size", "seed", "device"},
        "sample": {"model", "schedule", "batch_size", "device"},
        "fit": {"model", "data", "batch_size", "device"},
        "analytic": {"model", "data", "batch_size"},
    }[which]
    if argument in relevant:
        with pytest.raises((ValueError, TypeError)):
            call()
    state = model.state_dict()
    assert all(state[k].device.type == "cpu" and torch.equal(state[k], v) for k, v in snapshot.items())
    assert torch.equal(images, images_before) and np.array_equal(costs.kl, costs_before, equal_nan=True)


def test_the_fuzzed_files_start_valid(cli_model, costs, tmp_path, capsys):
    """Without a mutation each format is read and the command succeeds (so the fuzzing starts from valid files)."""
    good = costs.save(tmp_path / "c.npz")
    assert _cli(["schedule", good, "--steps", "3"], capsys, good)[0] == 0
    _write_npz(tmp_path / "c1.npz", _format1(costs))
    assert _cli(["schedule", tmp_path / "c1.npz", "--steps", "3"], capsys, tmp_path / "c1.npz")[0] == 0
    v = fit_analytic_variances(cli_model, discrete_data(5), costs).save(tmp_path / "v.json")
    argv = ["sample", *NET, "--variances", v, "--even", "3", "-n", "2", "--out", tmp_path / "x.npy"]
    assert _cli(argv, capsys, v)[0] == 0
