"""bench.decode and the faithful image path of bench.predict: sizes checked before decoding,
16-bit greyscale scaled by its bit depth (an 8-bit image saved as 16 bits predicts the same),
every conversion and resize named, NIfTI read within bounds, and a model.pt loaded without
fetching or opening the ImageNet weights its config names."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import nii_gz_bomb, npy_claiming, png_header_only, save_model
from PIL import Image

from bench.decode import CLI_LIMITS, PAGE_LIMITS, Limits, check_npz, open_image, read_npy
from bench.errors import UserError
from bench.predict import load_image, load_model, predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def breast_run(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("m") / "run", "breastmnist", "cnn_small")


def _gradient8(h: int = 40, w: int = 36) -> np.ndarray:
    """An 8-bit image using the full 0..255 range (most pixels well above 0)."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 7 + y * 3) % 256).astype(np.uint8)


# --- 16-bit and other depths --------------------------------------------------------------------

def test_a_16_bit_png_predicts_as_its_8_bit_version(tmp_path, breast_run) -> None:
    img8 = _gradient8()
    Image.fromarray(img8).save(tmp_path / "x8.png")
    Image.fromarray(img8.astype(np.uint16) * 257).save(tmp_path / "x16.png")
    assert Image.open(tmp_path / "x16.png").mode == "I;16"

    a8, notes8 = load_image(tmp_path / "x8.png", 1, 28)
    a16, notes16 = load_image(tmp_path / "x16.png", 1, 28)
    np.testing.assert_array_equal(a8, a16)  # the model sees the very same pixels
    _, (row8, row16) = predict(breast_run, None, [tmp_path / "x8.png", tmp_path / "x16.png"])
    assert row8["class"] == row16["class"]
    assert row8["probabilities"] == row16["probabilities"]
    assert any("16-bit greyscale (I;16) scaled to 0..255 by its bit depth" in n
               for n in notes16)
    assert not any("16-bit" in n for n in notes8)
    # the rule this replaces (PIL's convert("L")) clips: nearly every pixel turns white
    clipped = np.asarray(Image.open(tmp_path / "x16.png").convert("L"))
    assert (clipped == 255).mean() > 0.9 and (img8 == 255).mean() < 0.01


def _with_sbit(png: bytes, bits: int) -> bytes:
    """The PNG with an sBIT chunk (greyscale: one byte) right after IHDR."""
    body = struct.pack(">B", bits)
    chunk = (struct.pack(">I", 1) + b"sBIT" + body
             + struct.pack(">I", zlib.crc32(b"sBIT" + body) & 0xFFFFFFFF))
    end_ihdr = 8 + 8 + 13 + 4
    return png[:end_ihdr] + chunk + png[end_ihdr:]


def test_sbit_declares_a_12_bit_image(tmp_path) -> None:
    arr = np.zeros((28, 28), np.uint16)
    arr[:, 14:] = 4095  # full scale of 12 bits
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    (tmp_path / "plain.png").write_bytes(buf.getvalue())
    (tmp_path / "sbit.png").write_bytes(_with_sbit(buf.getvalue(), 12))

    out, notes = load_image(tmp_path / "sbit.png", 1, 28)
    assert out.max() == 255 and "12-bit greyscale" in notes[0] and "sBIT" in notes[0]
    out, notes = load_image(tmp_path / "plain.png", 1, 28)  # no sBIT: 16 bits, and a hint
    assert out.max() == 16 and "only reach 4095" in notes[0]


def test_a_float_image_is_scaled_by_its_range_and_says_so(tmp_path) -> None:
    arr = np.linspace(-1.0, 3.0, 28 * 28, dtype=np.float32).reshape(28, 28)
    Image.fromarray(arr, mode="F").save(tmp_path / "f.tiff")
    out, notes = load_image(tmp_path / "f.tiff", 1, 28)
    assert out.min() == 0 and out.max() == 255
    assert "range -1..3 scaled to 0..255" in notes[0]


def test_every_conversion_and_resize_is_named(tmp_path) -> None:
    Image.new("L", (1, 1), 200).save(tmp_path / "dot.png")
    out, notes = load_image(tmp_path / "dot.png", 1, 28)
    assert out.shape == (28, 28) and (out == 200).all()
    assert notes == ["dot.png: resized 1x1 -> 28x28 (bilinear, upscaled 28x)"]

    Image.new("RGBA", (64, 32), (10, 200, 30, 128)).save(tmp_path / "rgba.png")
    _, notes = load_image(tmp_path / "rgba.png", 1, 28)
    assert notes == ["rgba.png: alpha channel dropped (RGBA)",
                     "rgba.png: colour image (RGBA) converted to greyscale for a greyscale "
                     "model",
                     "rgba.png: resized 64x32 -> 28x28 (bilinear, aspect ratio not kept)"]

    Image.new("P", (28, 28)).save(tmp_path / "pal.png")
    _, notes = load_image(tmp_path / "pal.png", 1, 28)
    assert notes == ["pal.png: palette image converted to greyscale"]

    Image.new("L", (28, 28), 5).save(tmp_path / "plain.png")
    assert load_image(tmp_path / "plain.png", 1, 28)[1] == []


# --- limits, before decoding --------------------------------------------------------------------

def test_pixels_are_checked_before_decoding(tmp_path) -> None:
    # a header-only PNG: decoding it would fail on its data; the size check comes first
    png_header_only(tmp_path / "wide.png", 5000, 5000)
    with pytest.raises(UserError, match=r"5000x5000 pixels \(25 Mpx\).*\(17 Mpx\)"):
        open_image(tmp_path / "wide.png", PAGE_LIMITS)
    with pytest.raises(UserError, match="not a readable image"):
        open_image(tmp_path / "wide.png", CLI_LIMITS)  # allowed size: then decoded, and bad


def test_the_page_reads_png_and_jpeg_only(tmp_path) -> None:
    Image.new("L", (28, 28)).save(tmp_path / "x.png", format="TIFF")  # a TIFF named .png
    with pytest.raises(UserError, match=r"not a readable image \(PNG, JPEG\)"):
        open_image(tmp_path / "x.png", PAGE_LIMITS)
    assert open_image(tmp_path / "x.png", CLI_LIMITS).size == (28, 28)


def test_npy_reads_fortran_arrays_and_refuses_truncated_ones(tmp_path) -> None:
    vol = np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    np.save(tmp_path / "f.npy", vol)
    np.testing.assert_array_equal(read_npy(tmp_path / "f.npy"), vol)
    npy_claiming(tmp_path / "short.npy", (8, 8, 8), payload=100)
    with pytest.raises(UserError, match=r"truncated \.npy .*512 bytes; the file holds 100"):
        read_npy(tmp_path / "short.npy")
    with pytest.raises(UserError, match="more than this predictor decodes"):
        read_npy(tmp_path / "f.npy", Limits(max_voxels=23))


def test_npz_members_cannot_claim_more_than_the_file_holds(tmp_path) -> None:
    good = tmp_path / "good.npz"
    np.savez_compressed(good, a=np.zeros((100, 28, 28), np.uint8))
    check_npz(good, "fix")  # a real file passes
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                               "shape": (1000, 1000)})
    with zipfile.ZipFile(tmp_path / "stored.npz", "w", zipfile.ZIP_STORED) as z:
        z.writestr("a.npy", buf.getvalue() + b"\0" * 80)
    with pytest.raises(UserError, match=r"'a' claims shape \[1000, 1000\] float64.*; fix"):
        check_npz(tmp_path / "stored.npz", "fix")


# --- NIfTI --------------------------------------------------------------------------------------

def test_nifti_is_read_within_bounds(tmp_path) -> None:
    nibabel = pytest.importorskip("nibabel", reason="the nifti extra is not installed")
    from bench.decode import read_nifti

    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    nibabel.save(nibabel.Nifti2Image(vol, np.eye(4)), tmp_path / "v2.nii")
    np.testing.assert_array_equal(read_nifti(tmp_path / "v.nii.gz"), vol)
    np.testing.assert_array_equal(read_nifti(tmp_path / "v2.nii"), vol)
    data = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.nii.gz"):
        read_nifti(tmp_path / "cut.nii.gz")
    nii_gz_bomb(tmp_path / "bomb.nii.gz")
    with pytest.raises(UserError, match=r"640x640x640 \(262M values"):
        read_nifti(tmp_path / "bomb.nii.gz", PAGE_LIMITS)


PEAK_SCRIPT = """
import resource, sys, json
from pathlib import Path
from bench.predict import load_model
from bench.webapp import predict_upload
from bench.errors import UserError
model = load_model(Path(sys.argv[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    predict_upload(model, "bomb.nii.gz", Path(sys.argv[2]).read_bytes(), 16)
    message = None
except UserError as e:
    message = str(e)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_mb": before / 1024, "after_mb": after / 1024, "message": message}))
"""


def test_the_pages_memory_stays_bounded_on_a_nifti_bomb(tmp_path) -> None:
    """The page's decoder path in a fresh process: peak memory (maxrss) barely moves on a
    1 MB .nii.gz that decodes to 640^3 (the unbounded path took 5.7 GB)."""
    pytest.importorskip("nibabel", reason="the nifti extra is not installed")
    run = save_model(tmp_path / "run", "organmnist3d", "cnn3d_small")
    bomb = nii_gz_bomb(tmp_path / "bomb.nii.gz")
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(run), str(bomb)],
                          capture_output=True, text=True, check=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    peak = json.loads(done.stdout.strip().splitlines()[-1])
    assert peak["message"].startswith("bomb.nii.gz: the array is 640x640x640")
    assert peak["after_mb"] - peak["before_mb"] < 64, peak


# --- models -------------------------------------------------------------------------------------

def test_predict_never_fetches_or_opens_the_weights_a_model_file_names(tmp_path, monkeypatch
                                                                       ) -> None:
    import torch

    run = save_model(tmp_path / "run", "breastmnist", "resnet18")
    saved = torch.load(run / "model.pt", weights_only=True)
    lure = tmp_path / "imagenet.pth"
    torch.save({"x": torch.zeros(1)}, lure)  # a weights file that exists, and must stay shut
    saved["config"]["model_hp"] = {**saved["config"].get("model_hp", {}), "pretrained": True,
                                   "weights_path": str(lure)}
    torch.save(saved, run / "model.pt")

    def no_download(*a, **k):
        raise AssertionError("predict tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    opened: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and args and str(args[0]) == str(lure):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    m = load_model(run)
    assert not opened
    state = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, state[k]), k
