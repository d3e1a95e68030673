"""Bounded decoding of input files: images, `.npy` / `.npz` arrays and NIfTI volumes.

Why a module of its own: `medbench predict`, the web page (`bench.webapp`) and the data loader
(`bench.data.read_npz`) all read files that someone else made, and a small file can claim a huge
array. A 1 MB `.nii.gz` can decompress to a 640^3 volume (gigabytes once scaled to floats), a
few-kB PNG can declare 20000 x 20000 pixels, and a `.npy` header can claim 10^15 elements, which
numpy tries to allocate before reading a byte. Every reader here looks at the sizes a file
declares *before* decoding it and refuses, with one line naming the file, the size and the
limit, anything over `Limits`; what it then reads is bounded by those sizes.

Other refusals, each one line (a `UserError`): an array of strings, objects, records or complex
numbers; an empty array; a `.npy` shorter than its header says; an image format outside the
few this project reads (PIL has many plugins; a file is only tried against the ones listed).
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bench.errors import UserError

NIFTI_EXTRA = "pip install 'medmnist-bench[nifti]'"
VOLUME_SUFFIXES = (".npy", ".nii", ".nii.gz")
# PIL format names tried when opening an image (others are never parsed)
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats
# DEFLATE never expands more than ~1032:1; a zip member that claims more is lying
DEFLATE_MAX_RATIO = 1032


@dataclass(frozen=True)
class Limits:
    """The most a reader decodes from one file: pixels of an image, voxels of a volume and
    decompressed bytes of a volume file (array data, or a NIfTI stream); and the image
    formats (PIL plugins) a file is tried against."""

    max_pixels: int = 8192 * 8192
    max_voxels: int = 512 ** 3
    max_bytes: int = 1 << 30
    image_formats: tuple[str, ...] = IMAGE_FORMATS

    def describe(self) -> str:
        return (f"{self.max_pixels / 1e6:.0f} Mpx, {_count(self.max_voxels)} voxels, "
                f"{self.max_bytes / 2**20:.0f} MiB")


# `medbench predict` on the user's own machine: a 512^3 CT still reads.
CLI_LIMITS = Limits()
# The web page takes files from whoever can reach it; its inputs are a few MB (bench.serve).
PAGE_LIMITS = Limits(max_pixels=4096 * 4096, max_voxels=256 ** 3, max_bytes=128 << 20,
                     image_formats=("PNG", "JPEG"))


def _count(n: int) -> str:
    if n >= 10**12:
        return f"{n:.1e}"
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def suffix(path: str | Path) -> str:
    """The file's type as this project names it (`.nii.gz` counts as one suffix)."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


# --- images -------------------------------------------------------------------------------------

def open_image(path: Path, limits: Limits = CLI_LIMITS):
    """A PIL image of one of `limits.image_formats`, decoded only after its declared size
    passed `limits.max_pixels`."""
    from PIL import Image, UnidentifiedImageError

    formats = limits.image_formats

    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: our cap is lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=list(formats))
    except Image.DecompressionBombError as e:
        raise UserError(f"{path}: refused, the image is too large to decode ({e}); downscale "
                        "it first") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"{path}: not a readable image ({', '.join(formats)}): "
                        f"{_first_line(e)}") from None
    w, h = img.size
    if w * h > limits.max_pixels or w < 1 or h < 1:
        img.close()
        raise UserError(f"{path}: {w}x{h} pixels ({w * h / 1e6:.0f} Mpx) is more than this "
                        f"predictor decodes ({limits.max_pixels / 1e6:.0f} Mpx); downscale it "
                        "first (the model sees 28 to 224 px)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: not a readable image ({_first_line(e)})") from None
    return img


def png_significant_bits(path: Path) -> int | None:
    """The greyscale sample depth a PNG's sBIT chunk declares (e.g. 12 for a 12-bit X-ray
    stored in 16 bits), or None. PIL does not read sBIT; the chunks before IDAT are walked."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            for _ in range(64):  # sBIT must come before IDAT, after a handful of chunks
                head = f.read(8)
                if len(head) < 8:
                    return None
                length, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind == b"sBIT":
                    data = f.read(min(length, 4))
                    return int(data[0]) if data and 0 < data[0] <= 16 else None
                if kind in (b"IDAT", b"IEND"):
                    return None
                f.seek(length + 4, io.SEEK_CUR)
    except OSError:
        return None
    return None


# --- .npy / .npz --------------------------------------------------------------------------------

def npy_header(f: BinaryIO, name: str | Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from a `.npy` stream's header, without reading data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise UserError(f"{name}: not a readable .npy array ({_first_line(e)})") from None
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype)


def check_dtype(dtype: np.dtype, name: str | Path, what: str = "array") -> None:
    """Numbers only: refuse strings, objects, records (structured), complex and void."""
    if dtype.fields is not None or dtype.subdtype is not None:
        raise UserError(f"{name}: the {what} has a structured dtype ({dtype}); save a plain "
                        "numeric array (e.g. uint8 or float32)")
    if dtype.hasobject or dtype.kind not in NUMERIC_KINDS:
        kinds = {"U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers",
                 "V": "raw bytes", "M": "dates", "m": "time deltas"}
        raise UserError(f"{name}: the {what} holds {kinds.get(dtype.kind, str(dtype))} "
                        f"({dtype}), not numbers; save a numeric array (e.g. uint8 or float32)")


def _check_size(shape: tuple[int, ...], dtype: np.dtype, name: str | Path,
                limits: Limits) -> int:
    count = math.prod(shape)
    if count == 0:
        raise UserError(f"{name}: the array is empty (shape {shape}); nothing to classify")
    nbytes = count * dtype.itemsize
    if count > limits.max_voxels or nbytes > limits.max_bytes:
        raise UserError(f"{name}: the array is {_shape_text(shape)} ({_count(count)} values, "
                        f"{nbytes / 2**20:,.0f} MiB), more than this predictor decodes "
                        f"({_count(limits.max_voxels)} values, {limits.max_bytes / 2**20:.0f} "
                        "MiB); crop or downsample it first")
    return nbytes


def read_npy(path: Path, limits: Limits = CLI_LIMITS) -> np.ndarray:
    """A `.npy` array whose header passed `limits` and the numeric-dtype check."""
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = npy_header(f, path)
            check_dtype(dtype, path)
            nbytes = _check_size(shape, dtype, path, limits)
            left = os.fstat(f.fileno()).st_size - f.tell()
            if left < nbytes:
                raise UserError(f"{path}: truncated .npy (its header says "
                                f"{_shape_text(shape)} {dtype}, {nbytes} bytes; the file holds "
                                f"{left}); save it again")
            data = np.fromfile(f, dtype=dtype, count=math.prod(shape))
    except OSError as e:
        raise UserError(f"{path}: not a readable .npy array ({_first_line(e)})") from None
    return data.reshape(shape, order="F" if fortran else "C")


def memory_bytes() -> int:
    """This machine's physical memory (an allocation above it can never succeed)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 1 << 40


def check_npz(path: Path, fix: str) -> None:
    """Before `np.load` allocates anything: every array member's header must claim no more
    bytes than the member holds, than its compressed size can expand to (DEFLATE's ratio), and
    than this machine's memory. A header claiming 10^11 images is one clear line, not a
    MemoryError. `fix` ends the message (what to do about a bad file)."""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[:-4]
                with z.open(info) as f:
                    shape, _, dtype = npy_header(f, f"{path} ({key})")
                    header = f.tell()
                nbytes = math.prod(shape) * dtype.itemsize
                bound = min(info.file_size - header,
                            info.compress_size * DEFLATE_MAX_RATIO
                            if info.compress_type != zipfile.ZIP_STORED else info.compress_size,
                            memory_bytes())
                if nbytes > bound:
                    raise UserError(f"{path}: '{key}' claims shape {list(shape)} {dtype} "
                                    f"({nbytes / 2**20:,.0f} MiB) but the file holds at most "
                                    f"{max(bound, 0) / 2**20:,.0f} MiB for it; {fix}")
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path} is not a readable .npz file ({_first_line(e)}); "
                        f"{fix}") from None


# --- NIfTI --------------------------------------------------------------------------------------

class _Bounded(io.RawIOBase):
    """A read-only stream that fails once more than `limit` bytes were read from it."""

    def __init__(self, raw: BinaryIO, limit: int, name: str | Path) -> None:
        self.raw, self.limit, self.name, self.read_bytes = raw, limit, name, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)
        self.read_bytes += n or 0
        if self.read_bytes > self.limit:
            raise UserError(f"{self.name}: decompresses to more than {self.limit / 2**20:.0f} "
                            "MiB, more than this predictor decodes; crop or downsample it first")
        return n


def read_nifti(path: Path, limits: Limits = CLI_LIMITS) -> np.ndarray:
    """A NIfTI-1/2 volume (`.nii`, `.nii.gz`) through nibabel, bounded: the header is read
    first and its shape and data type checked against `limits`; then exactly the bytes it
    declares are read (decompressing a `.nii.gz` stops there, and never passes
    `limits.max_bytes`), and nibabel builds the image from those bytes in memory."""
    try:
        import nibabel
    except ImportError:
        raise UserError(f"{path}: reading NIfTI needs nibabel; install the extra: "
                        f"{NIFTI_EXTRA}") from None
    import gzip

    gz = suffix(path) == ".nii.gz"
    try:
        with open(path, "rb") as raw:
            stream = io.BufferedReader(_Bounded(gzip.GzipFile(fileobj=raw) if gz else raw,
                                                limits.max_bytes, path))
            head = stream.read(540)
            klass = _nifti_class(nibabel, head, path)
            hdr = klass.header_class.from_fileobj(io.BytesIO(head), check=True)
            shape = tuple(int(s) for s in hdr.get_data_shape())
            dtype = np.dtype(hdr.get_data_dtype())
            check_dtype(dtype, path, "volume")
            nbytes = _check_size(shape, dtype, path, limits)
            offset = int(hdr.get_data_offset())
            if offset > limits.max_bytes - nbytes:
                raise UserError(f"{path}: its header puts the data at byte {offset}, past what "
                                "this predictor reads; save the volume again")
            data = head + stream.read(max(0, offset + nbytes - len(head)))
    except UserError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, nibabel.spatialimages.HeaderDataError,
            nibabel.filebasedimages.ImageFileError) as e:
        raise UserError(f"{path}: not a readable NIfTI file ({_first_line(e)})") from None
    if len(data) < offset + nbytes:
        raise UserError(f"{path}: truncated NIfTI file (its header says {_shape_text(shape)} "
                        f"{dtype}); save it again")
    try:
        img = klass.from_bytes(data)
        return np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # noqa: BLE001 - nibabel raises many kinds for a bad file
        raise UserError(f"{path}: not a readable NIfTI file ({_first_line(e)})") from None


def _nifti_class(nibabel: Any, head: bytes, path: Path) -> Any:
    """Nifti1Image or Nifti2Image, from the header's sizeof_hdr (348 or 540, either byte
    order); anything else is not a single-file NIfTI."""
    if len(head) >= 4:
        for order in ("little", "big"):
            size = int.from_bytes(head[:4], order)
            if size == 348:
                return nibabel.Nifti1Image
            if size == 540:
                return nibabel.Nifti2Image
    raise UserError(f"{path}: not a NIfTI-1 or NIfTI-2 file (no valid header)")


# --- volumes ------------------------------------------------------------------------------------

def read_volume(path: Path, limits: Limits = CLI_LIMITS) -> np.ndarray:
    """A (D, H, W) numeric array from `.npy` or NIfTI, bounded by `limits`."""
    kind = suffix(path)
    if kind == ".npy":
        vol = read_npy(path, limits)
    elif kind in (".nii", ".nii.gz"):
        vol = read_nifti(path, limits)
    else:
        raise UserError(f"{path}: a 3D model reads volumes ({', '.join(VOLUME_SUFFIXES)})")
    vol = np.squeeze(vol)
    if vol.ndim != 3:
        raise UserError(f"{path}: expected a volume of shape (D, H, W), got {vol.shape}")
    if vol.dtype.kind == "f" and not np.isfinite(vol).any():
        raise UserError(f"{path}: the volume holds no finite values (all NaN or infinite)")
    return vol


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] if text else type(e).__name__
