"""Bad inputs, one builder per class, each returning the `medbench` argv that meets it.

Shared by tests/test_bad_inputs.py (every class: exit 2, one `error:` line, no traceback) and by
scripts/bad_inputs_table.py (the before/after table: the same argv run against another
checkout). Files are crafted to be small: a header that claims a huge array, not a huge array.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

FULL_ENV = "BAD_INPUTS_FULL"  # set: bombs hold all their (zero) pixels, as a real one does


def png_header_only(path: Path, width: int, height: int, colour: int = 0) -> Path:
    """A PNG that declares width x height (greyscale, or 6: RGBA). Its IDAT is one tiny
    stream (PIL reads the size from IHDR without decoding, and the decoder refuses before
    decoding), or with $BAD_INPUTS_FULL every row of zeros, compressed (a real bomb: ~0.1% of
    its decoded size)."""
    import os

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    if os.environ.get(FULL_ENV):
        row = b"\0" * (1 + width * (4 if colour == 6 else 1))
        z = zlib.compressobj(9)
        body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    else:
        body = zlib.compress(b"\0" * 4096, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))
    return path


def npy_claiming(path: Path, shape: tuple[int, ...], descr: str = "|u1",
                 payload: int = 64) -> Path:
    """A .npy whose header claims `shape` but that holds `payload` bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    path.write_bytes(buf.getvalue() + b"\0" * payload)
    return path


def npz_claiming(path: Path, flag_arrays: dict[str, np.ndarray], key: str,
                 shape: tuple[int, ...]) -> Path:
    """A .npz of `flag_arrays` whose `key` member is replaced by a header claiming `shape`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, arr in flag_arrays.items():
            if name == key:
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
                z.writestr(f"{name}.npy", buf.getvalue() + b"\0" * 1000)
            else:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr)
                z.writestr(f"{name}.npy", buf.getvalue())
    return path


def nii_gz_bomb(path: Path, side: int = 640) -> Path:
    """A ~1 MB .nii.gz of a side^3 uint8 volume of zeros (640^3: 262 M voxels; nibabel's
    get_fdata makes that gigabytes of floats). Needs nibabel only to write the header."""
    import gzip

    import nibabel

    hdr = nibabel.Nifti1Header()
    hdr.set_data_shape((side, side, side))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(hdr.binaryblock + b"\0" * 4)  # header + empty extension flag
        zeros = b"\0" * (1 << 22)
        left = side ** 3
        while left:
            n = min(left, len(zeros))
            f.write(zeros[:n])
            left -= n
    return path


def save_model(run: Path, dataset: str, model: str, state_from: str | None = None,
               **hp) -> Path:
    """A `medbench train`-style directory (model.pt) with an untrained model; `state_from`
    puts another family's weights under this config (a wrong-architecture file)."""
    import torch

    from bench.data import dataset_info
    from bench.models import create_model
    from bench.train import TrainConfig

    conf = TrainConfig.from_dict({"dataset": dataset, "model": model, **hp})
    info = dataset_info(dataset)
    torch.manual_seed(0)
    net = create_model(state_from or conf.model, info.n_channels, info.n_classes, conf.size,
                       **({} if state_from else conf.model_hp))
    run.mkdir(parents=True, exist_ok=True)
    torch.save({"config": conf.to_dict(), "state_dict": net.state_dict()}, run / "model.pt")
    return run


def data_file(folder: Path, flag: str = "breastmnist", n=(8, 4, 4),
              edit: Callable[[dict[str, np.ndarray]], None] | None = None) -> Path:
    """A synthetic data file, changed by `edit` (in place) before it is written."""
    from bench.data import synthetic_arrays

    arrays = synthetic_arrays(flag, n=n, seed=0)
    if edit is not None:
        edit(arrays)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{flag}.npz", **arrays)
    return folder


def _train(data: Path, out: Path) -> list[str]:
    return ["train", "--dataset", "breastmnist", "--model", "mlp", "--epochs", "1",
            "--data-dir", str(data), "--no-verify", "--device", "cpu", "--set", "threads=1",
            "--out", str(out)]


# --- the classes: name -> builder(tmp) -> argv --------------------------------------------------

def png_bomb_400mpx(tmp: Path) -> list[str]:
    run = save_model(tmp / "run", "breastmnist", "mlp")
    return ["predict", "--run", str(run), str(png_header_only(tmp / "bomb.png", 20000, 20000))]


def png_81mpx_rgba(tmp: Path) -> list[str]:
    run = save_model(tmp / "run", "breastmnist", "mlp")
    return ["predict", "--run", str(run),
            str(png_header_only(tmp / "big.png", 9000, 9000, colour=6))]


def wrong_architecture_model(tmp: Path) -> list[str]:
    from PIL import Image

    run = save_model(tmp / "run", "breastmnist", "cnn_small", state_from="mlp")
    Image.new("L", (28, 28), 90).save(tmp / "a.png")
    return ["predict", "--run", str(run), str(tmp / "a.png")]


def npy_claiming_1e15_voxels(tmp: Path) -> list[str]:
    run = save_model(tmp / "run", "organmnist3d", "cnn3d_small")
    return ["predict", "--run", str(run),
            str(npy_claiming(tmp / "huge.npy", (10**5, 10**5, 10**5)))]


def npz_claiming_1e11_images(tmp: Path) -> list[str]:
    from bench.data import synthetic_arrays

    data = tmp / "data"
    data.mkdir()
    npz_claiming(data / "breastmnist.npz", synthetic_arrays("breastmnist", n=(8, 4, 4)),
                 "train_images", (10**11, 28, 28))
    return _train(data, tmp / "out")


def _volume(tmp: Path, name: str, arr: np.ndarray) -> list[str]:
    run = save_model(tmp / "run", "organmnist3d", "cnn3d_small")
    np.save(tmp / name, arr)
    return ["predict", "--run", str(run), str(tmp / name)]


def empty_volume(tmp: Path) -> list[str]:
    return _volume(tmp, "empty.npy", np.zeros((0, 28, 28), np.uint8))


def string_volume(tmp: Path) -> list[str]:
    return _volume(tmp, "text.npy", np.full((4, 4, 4), "a"))


def structured_volume(tmp: Path) -> list[str]:
    return _volume(tmp, "rec.npy", np.zeros((4, 4, 4), dtype=[("a", "u1"), ("b", "f4")]))


def nan_volume(tmp: Path) -> list[str]:
    return _volume(tmp, "nan.npy", np.full((8, 8, 8), np.nan, np.float32))


def nii_gz_bomb_1mb(tmp: Path) -> list[str]:
    run = save_model(tmp / "run", "organmnist3d", "cnn3d_small")
    return ["predict", "--run", str(run), str(nii_gz_bomb(tmp / "bomb.nii.gz"))]


def string_labels(tmp: Path) -> list[str]:
    def edit(a: dict) -> None:
        a["train_labels"] = a["train_labels"].astype(str)

    return _train(data_file(tmp / "data", edit=edit), tmp / "out")


def float_labels(tmp: Path) -> list[str]:
    def edit(a: dict) -> None:
        y = a["train_labels"].astype(np.float32)
        y[0, 0] = 0.5
        a["train_labels"] = y

    return _train(data_file(tmp / "data", edit=edit), tmp / "out")


def empty_train_split(tmp: Path) -> list[str]:
    def edit(a: dict) -> None:
        a["train_images"] = a["train_images"][:0]
        a["train_labels"] = a["train_labels"][:0]

    return _train(data_file(tmp / "data", edit=edit), tmp / "out")


CASES: dict[str, Callable[[Path], list[str]]] = {
    "PNG bomb, 400 Mpx": png_bomb_400mpx,
    "PNG, 81 Mpx RGBA": png_81mpx_rgba,
    "model.pt of another architecture": wrong_architecture_model,
    ".npy header claiming 10^15 voxels": npy_claiming_1e15_voxels,
    ".npz header claiming 10^11 images": npz_claiming_1e11_images,
    "empty volume": empty_volume,
    "string volume": string_volume,
    "structured-dtype volume": structured_volume,
    "all-NaN volume": nan_volume,
    "string labels": string_labels,
    "float labels {0, 0.5}": float_labels,
    "empty train split (medbench train)": empty_train_split,
}
NIFTI_CASES: dict[str, Callable[[Path], list[str]]] = {
    ".nii.gz bomb (1 MB -> 640^3)": nii_gz_bomb_1mb,
}
