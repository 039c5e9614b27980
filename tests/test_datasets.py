"""Local image data sets: every format, scaling to [-1, 1], layouts and clear errors."""

import pickle

import numpy as np
import pytest
import torch

from dpddpm.external import load_images


def _images(n, c=3, s=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, s, s), dtype=np.uint8)


def _expected(x):
    return torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0)


def test_cifar10_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = _images(3, s=32, seed=i)
        batches[name] = x
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": x.reshape(3, -1), b"labels": [0, 1, 2]}, fh)
    train = load_images(folder)
    assert train.shape == (15, 3, 32, 32) and train.dtype == torch.float32
    torch.testing.assert_close(train[:3], _expected(batches["data_batch_1"]))
    torch.testing.assert_close(load_images(tmp_path, split="test"), _expected(batches["test_batch"]))
    assert load_images(folder, limit=4).shape[0] == 4
    with pytest.raises(ValueError, match="split"):
        load_images(folder, split="valid")


def test_imagenet64_npz_chw_rows_and_hwc(tmp_path):
    x = _images(2, s=64)
    np.savez(tmp_path / "train_data_batch_1.npz", data=x.reshape(2, -1), labels=np.array([1, 2]))
    torch.testing.assert_close(load_images(tmp_path / "train_data_batch_1.npz"), _expected(x))
    np.savez(tmp_path / "hwc.npz", data=x.transpose(0, 2, 3, 1))
    torch.testing.assert_close(load_images(tmp_path / "hwc.npz"), _expected(x))


def test_npz_single_array_and_key(tmp_path):
    x = _images(5, c=1, s=8)
    np.savez(tmp_path / "one.npz", x[:, 0])  # (N, H, W) grayscale, the only array
    out = load_images(tmp_path / "one.npz", limit=2)
    torch.testing.assert_close(out, _expected(x[:2]))
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(ValueError, match="several arrays"):
        load_images(tmp_path / "two.npz")
    torch.testing.assert_close(load_images(tmp_path / "two.npz", split="b"), _expected(x))
    np.savez(tmp_path / "float.npz", data=x.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_images(tmp_path / "float.npz")


def test_png_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    x = _images(3, s=6)
    for i, im in enumerate(x):
        Image.fromarray(im.transpose(1, 2, 0)).save(tmp_path / f"{i:03d}.png")
    torch.testing.assert_close(load_images(tmp_path), _expected(x))
    gray = tmp_path / "gray"
    gray.mkdir()
    for i, im in enumerate(x[:, 0]):
        Image.fromarray(im).save(gray / f"{i}.png")
    torch.testing.assert_close(load_images(gray), _expected(x[:, :1]))
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "999.png")
    with pytest.raises(ValueError, match="inconsistent image sizes"):
        load_images(tmp_path)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_images(tmp_path / "nope")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown data format"):
        load_images(tmp_path / "a.txt")
    with pytest.raises(ValueError, match="neither"):
        load_images(tmp_path)


def _npz_cut_short(tmp_path):
    np.savez(tmp_path / "x.npz", data=_images(4))
    blob = (tmp_path / "x.npz").read_bytes()
    (tmp_path / "x.npz").write_bytes(blob[: len(blob) // 2])
    return tmp_path / "x.npz", tmp_path / "x.npz"


def _npz_not_a_zip(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"some text, not an archive")  # numpy would suggest allow_pickle: unsafe
    return tmp_path / "x.npz", tmp_path / "x.npz"


def _npz_bad_crc(tmp_path):
    np.savez(tmp_path / "x.npz", data=_images(4))
    blob = bytearray((tmp_path / "x.npz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "x.npz").write_bytes(bytes(blob))
    return tmp_path / "x.npz", tmp_path / "x.npz"


def _png_garbage(tmp_path):
    pytest.importorskip("PIL")
    (tmp_path / "000.png").write_bytes(b"not a PNG" * 8)
    return tmp_path, tmp_path / "000.png"


def _png_cut_short(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(_images(1, s=16)[0].transpose(1, 2, 0)).save(tmp_path / "000.png")
    blob = (tmp_path / "000.png").read_bytes()
    (tmp_path / "000.png").write_bytes(blob[: len(blob) // 2])
    return tmp_path, tmp_path / "000.png"


def _cifar_batch(content: bytes):
    def make(tmp_path):
        (tmp_path / "test_batch").write_bytes(content)
        return tmp_path, tmp_path / "test_batch"

    return make


@pytest.mark.parametrize(
    "make",
    [
        _npz_cut_short,
        _npz_not_a_zip,
        _npz_bad_crc,
        _png_garbage,
        _png_cut_short,
        _cifar_batch(b"not a pickle"),
        _cifar_batch(pickle.dumps({b"data": 1})[:-3]),
    ],
)
def test_corrupt_files_are_named(make, tmp_path):
    path, bad = make(tmp_path)
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        load_images(path, split="test" if bad.name == "test_batch" else None)
    assert f"{bad} is not a readable" in str(info.value) and "allow_pickle" not in str(info.value)


def test_cifar_batch_of_another_kind(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps(5))  # a pickle, but not a dict
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        load_images(tmp_path, split="test")


def test_folders_where_files_belong(tmp_path):
    (tmp_path / "cifar" / "test_batch").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"cannot read CIFAR-10 python batch .*test_batch"):
        load_images(tmp_path / "cifar", split="test")
    (tmp_path / "pngs" / "1.png").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"cannot read PNG image .*1.png"):
        load_images(tmp_path / "pngs")


def test_unreadable_file_is_not_called_corrupt(tmp_path, monkeypatch):
    import builtins

    np.savez(tmp_path / "x.npz", data=_images(2))
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):  # root may read anything: simulate a file it may not
        if str(file) == str(tmp_path / "x.npz"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    with pytest.raises(PermissionError, match=r"cannot read \.npz file .*x\.npz: Permission denied") as info:
        load_images(tmp_path / "x.npz")
    assert "corrupt" not in str(info.value)


class _Boom:
    """An object whose unpickling would run code (here: os.getcwd, harmless, as the stand-in)."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_cifar_batch_cannot_run_code(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Boom()}))
    with pytest.raises(ValueError, match="posix.getcwd|os.getcwd"):
        load_images(tmp_path, split="test")
