"""Classify image files or volumes with a model from a run directory.

Which model: a `medbench train` directory holds one (`model.pt` at its top); in a directory with
`final.parquet` (`medbench run`, `medbench train --seeds`) it is the board entry the run picked
(`bench.picked`: the leaderboard's own `picked` marker, chosen on validation), served as the
board scored it: a seed ensemble averages its seeds' probabilities, a blend mixes them with its
weights, a `+hflip` entry also scores each input mirrored (`EnsembleModel`). `--entry` chooses
another entry of the board by name. The output names the entry and its members, so the model
deployed is the model reported.

Why it is careful about its inputs:

* `model.pt` is loaded with `torch.load(weights_only=True)`: a pickle can run any code when it is
  loaded, and run directories get copied around. A file holding anything but tensors and plain
  containers is refused with one clear error (a test plants a file-creating payload). The
  architecture is built without fetching ImageNet weights (`weights_from_checkpoint`): every
  weight is in model.pt, and a `weights_path` named inside a model file is never opened.
  Weights that do not fit the architecture its config names are one clear error.
* Files are decoded by `bench.decode`, which checks the sizes a file declares before decoding
  (pixels, voxels, decompressed bytes: `Limits`) and refuses non-numeric arrays.
* Inputs are made to look like the training data, and every change is named in the output
  (`warnings`): colour to greyscale or the reverse, a dropped alpha channel, a palette, a
  16-bit (or other high-bit-depth) greyscale image scaled to 0-255 by its bit depth, a resize
  (with its sizes; an upscale says so); a volume of another shape is resampled (trilinear) to
  the model's size and non-uint8 volumes are min-max scaled to 0-255, the range the model was
  trained on.
* The scores go through the trainer's own `scores_from_logits` after the trainer's `normalize`,
  so a prediction equals what evaluation computed for the same input. Multi-label models
  (ChestMNIST) report every label with p > 0.5, not an argmax.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.data import DatasetInfo, dataset_info, normalize, to_tensor_images
from bench.decode import CLI_LIMITS, VOLUME_SUFFIXES, Limits
from bench.decode import NIFTI_EXTRA as NIFTI_EXTRA  # re-exported: callers name the extra
from bench.decode import suffix as _suffix
from bench.errors import UserError

if TYPE_CHECKING:
    from bench.picked import Entry

THRESHOLD = 0.5  # multi-label: a label is predicted when its probability is above this


@dataclass
class LoadedModel:
    """One trained network ready to score inputs, with what is needed to prepare them."""

    path: Path  # the training-run directory it came from
    info: DatasetInfo
    size: int
    dims: int  # 2: images, 3: volumes (from the model registry)
    model: torch.nn.Module
    config: dict[str, Any] = field(default_factory=dict)
    entry: Entry | None = None  # the board entry it serves (set by `load_model`)

    def probabilities(self, x: torch.Tensor, hflip: bool = False) -> np.ndarray:
        """Probabilities for a normalised batch, through the trainer's `scores_from_logits`;
        `hflip`: of the batch mirrored left-right (its last axis, as the trainer's
        `Runner.scores(hflip=True)`)."""
        from bench.train import scores_from_logits

        if hflip:
            x = torch.flip(x, dims=(-1,))
        with torch.no_grad():
            return scores_from_logits(self.model(x), self.info.multi_label).numpy().astype(
                np.float64)


@dataclass
class EnsembleModel:
    """A board entry of several networks (a seed ensemble, a blend) or with a test-time flip:
    the members' probabilities mixed with their weights, as the board mixed their scores."""

    path: Path  # the run directory
    info: DatasetInfo
    size: int
    dims: int
    config: dict[str, Any]  # the heaviest member's (input messages name its model)
    entry: Entry
    members: list[tuple[LoadedModel, float]]

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        from bench.leaderboard import HFLIP

        def member(m: LoadedModel) -> np.ndarray:
            p = m.probabilities(x)
            return (p + m.probabilities(x, hflip=True)) / 2 if self.entry.tta == HFLIP else p

        return np.sum([weight * member(m) for m, weight in self.members], axis=0)


Model = LoadedModel | EnsembleModel


def choose_entry(run_dir: Path, dataset: str | None, entry: str | None = None,
                 family: str | None = None) -> Entry:
    """The board entry to serve from a run directory with final.parquet (see module doc)."""
    from bench.picked import choose, run_entries
    from bench.rundir import RunDir

    run_dir = Path(run_dir)
    if not RunDir(run_dir).has_final():
        raise UserError(f"{run_dir} holds neither model.pt (a `medbench train` run) nor "
                        "final.parquet (a `medbench run`); pass one of those directories")
    return choose(run_entries(run_dir, dataset), entry, family)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """`model.pt` with tensors and plain containers only; anything else is refused."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise UserError(f"{path} holds Python objects besides tensors{what}, which could run "
                        "code when loaded; refusing it. Use a model.pt written by medbench "
                        "from a run you trust") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable model file ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); "
                        "re-run training to write it again") from None
    if not isinstance(saved, dict) or not {"config", "state_dict"} <= saved.keys():
        raise UserError(f"{path} is not a medbench model file (no config/state_dict)")
    return saved


def load_network(model_dir: Path, dataset: str | None = None) -> LoadedModel:
    """The network in `model_dir/model.pt`, in eval mode on the CPU, built without fetching any
    weights."""
    from bench.models import create_model, get_entry
    from bench.models.pretrained import weights_from_checkpoint
    from bench.train import TrainConfig

    path = Path(model_dir) / "model.pt"
    if not path.is_file():
        raise UserError(f"{path}: no such model file; the run's final seeds write one (re-run "
                        "the final phase, or choose another entry)")
    saved = load_checkpoint(path)
    try:
        conf = TrainConfig.from_dict(dict(saved["config"]))
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"{path}: its config is not a medbench training config "
                        f"({str(e).splitlines()[0][:200]}); re-run training to write it "
                        "again") from None
    if dataset is not None and conf.dataset != dataset:
        raise UserError(f"{model_dir} holds a model for {conf.dataset}, not {dataset}; drop "
                        "--dataset or pass a run of that dataset")
    info = dataset_info(conf.dataset)
    with weights_from_checkpoint():
        model = create_model(conf.model, info.n_channels, info.n_classes, conf.size,
                             **conf.model_hp)
    state = saved["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: its state_dict is not a dict of tensors; re-run training")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as e:
        first = " ".join(str(e).split())
        raise UserError(f"{path}: its weights do not fit the {conf.model} model its config "
                        f"names ({first[:240]}); the file was edited or written by another "
                        "version: re-run training to write it again") from None
    model.eval()
    return LoadedModel(Path(model_dir), info, conf.size, get_entry(conf.model).dims, model,
                       dict(saved["config"]))


def load_entry(entry: Entry) -> Model:
    """Every member of a board entry loaded (`load_network`); one network when the entry is one
    model without a test-time transform, else an `EnsembleModel`."""
    nets = [(load_network(m.run_dir, entry.dataset), m.weight) for m in entry.members]
    shapes = {(n.info.flag, n.size, n.dims) for n, _ in nets}
    if len(shapes) != 1:
        raise UserError(f"{entry.run_dir}: the members of {entry.name!r} take different inputs "
                        f"({sorted(shapes)}); the run directory is inconsistent")
    if len(nets) == 1 and not entry.tta:
        nets[0][0].entry = entry
        return nets[0][0]
    first = max(nets, key=lambda nw: nw[1])[0]
    return EnsembleModel(entry.run_dir, first.info, first.size, first.dims, first.config,
                         entry, nets)


def load_model(run_dir: Path, dataset: str | None = None, entry: str | None = None,
               family: str | None = None) -> Model:
    """What a run directory serves (see module doc): a `medbench train` directory's one model,
    else the board entry `choose_entry` names, with every member loaded."""
    from bench.picked import Entry, Member, canonical_name

    run_dir = Path(run_dir)
    if (run_dir / "model.pt").is_file():  # one `medbench train` run
        m = load_network(run_dir, dataset)
        name = str(m.config.get("model"))
        for option, asked in (("--entry", entry), ("--family", family)):
            if asked is not None and canonical_name(asked) != name:
                raise UserError(f"{run_dir} is a `medbench train` directory holding one {name} "
                                f"model; {option} {asked!r} names an entry of a run directory")
        seed = m.config.get("seed")
        m.entry = Entry(run_dir, m.info.flag, m.size, name, "single", "", True, float("nan"),
                        (Member(run_dir, name, None if seed is None else int(seed), 1.0),))
        return m
    return load_entry(choose_entry(run_dir, dataset, entry, family))


# --- inputs -------------------------------------------------------------------------------------

GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _high_depth_grey(img: Any, path: Path) -> tuple[np.ndarray, str]:
    """A 16-bit (or 32-bit integer, or float) greyscale image as uint8 0..255, and the note
    that says how. Integer images are scaled by their bit depth (PNG's sBIT chunk when it
    declares fewer significant bits, else 16), which keeps an 8-bit image saved as 16 bits
    (x257) exactly the same; PIL's own `convert("L")` clips instead, turning nearly every
    pixel white. Float images and integers beyond 16 bits are scaled by their range."""
    from bench.decode import png_significant_bits

    arr = np.asarray(img)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode != "F" and lo >= 0 and hi <= 65535:
        bits = png_significant_bits(path) or 16
        top = 2 ** bits - 1
        note = (f"{path.name}: {bits}-bit greyscale ({img.mode}) scaled to 0..255 by its bit "
                f"depth (x255/{top})" + (" as its PNG sBIT chunk declares" if bits != 16 else ""))
        if bits == 16 and hi <= 4095:
            note += (f"; its values only reach {hi:.0f}: if it is a 12-bit image, it looks "
                     "darker to the model than intended (rescale it to 8 bits first)")
        scaled = np.asarray(arr, np.float64) * (255.0 / top)
    else:
        note = (f"{path.name}: {'float' if img.mode == 'F' else '32-bit'} greyscale image: its "
                f"range {lo:g}..{hi:g} scaled to 0..255")
        scaled = ((np.asarray(arr, np.float64) - lo) / (hi - lo) * 255.0 if hi > lo
                  else np.zeros(arr.shape))
    return np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8), note


def load_image(path: Path, channels: int, size: int,
               limits: Limits = CLI_LIMITS) -> tuple[np.ndarray, list[str]]:
    """An image file -> MedMNIST's file layout (H, W) or (H, W, 3), uint8, resized; plus a
    note for every change made on the way (bit depth, alpha, palette, channels, size)."""
    from PIL import Image, ImageOps

    from bench.decode import open_image

    img = open_image(path, limits)
    notes = []
    if img.getexif().get(0x0112, 1) not in (0, 1):  # EXIF orientation: shown turned
        img = ImageOps.exif_transpose(img)
        notes.append(f"{path.name}: turned upright as its EXIF orientation says")
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr, note = _high_depth_grey(img, path)
        notes.append(note)
        img = Image.fromarray(arr, mode="L")
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        notes.append(f"{path.name}: alpha channel dropped ({img.mode})")
    elif img.mode == "P":
        notes.append(f"{path.name}: palette image converted to "
                     f"{'greyscale' if channels == 1 else 'RGB'}")
    elif img.mode == "1":
        notes.append(f"{path.name}: 1-bit image read as 8-bit greyscale (0 or 255)")
    elif img.mode not in ("L", "RGB", "LA", "RGBA", "P"):
        notes.append(f"{path.name}: {img.mode} image converted to "
                     f"{'greyscale' if channels == 1 else 'RGB'}")
    grey = img.mode in GREY_MODES or (img.mode == "P" and _palette_is_grey(img))
    if channels == 1 and not grey:
        notes.append(f"{path.name}: colour image ({img.mode}) converted to greyscale for a "
                     "greyscale model")
    elif channels == 3 and grey:
        notes.append(f"{path.name}: greyscale image converted to RGB (3 equal channels) for a "
                     "colour model")
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    if (w, h) != (size, size):
        how = ["bilinear"]
        if w < size or h < size:
            how.append(f"upscaled {max(size / w, size / h):.3g}x")
        if w != h:
            how.append("aspect ratio not kept")
        notes.append(f"{path.name}: resized {w}x{h} -> {size}x{size} ({', '.join(how)})")
        img = img.resize((size, size), Image.BILINEAR)
    return np.array(img, dtype=np.uint8), notes  # writable: torch.from_numpy takes it


def _palette_is_grey(img: Any) -> bool:
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def read_volume(path: Path, limits: Limits = CLI_LIMITS) -> np.ndarray:
    """A (D, H, W) array from `.npy` or NIfTI (`.nii`, `.nii.gz`), bounded (bench.decode)."""
    from bench.decode import read_volume as decode_volume

    return decode_volume(path, limits)


def prepare_volume(vol: np.ndarray, size: int, path: Path) -> tuple[np.ndarray, list[str]]:
    """A volume -> uint8 (size, size, size) like MedMNIST 3D files (see module doc)."""
    notes = []
    if vol.dtype != np.uint8:
        v = vol.astype(np.float32)
        finite = np.isfinite(v)
        lo, hi = float(v[finite].min()), float(v[finite].max())
        v = np.nan_to_num((v - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(v),
                          nan=0.0, posinf=255.0, neginf=0.0)
        vol = np.clip(np.rint(v), 0, 255).astype(np.uint8)
        notes.append(f"{path.name}: {lo:g}..{hi:g} scaled to 0..255"
                     + ("" if finite.all() else " (NaN/infinite voxels set to 0/255)"))
    if vol.shape != (size,) * 3:
        t = torch.from_numpy(vol.astype(np.float32))[None, None]
        t = torch.nn.functional.interpolate(t, size=(size,) * 3, mode="trilinear",
                                            align_corners=False)
        notes.append(f"{path.name}: resampled {tuple(vol.shape)} -> {(size,) * 3} (trilinear)")
        vol = t[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    return vol, notes


def load_input(path: Path, m: Model,
               limits: Limits = CLI_LIMITS) -> tuple[np.ndarray, list[str]]:
    """One input file in the layout of the model's dataset files, plus notes on every change.
    `limits`: what the decoder may decode (the web page passes tighter ones)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    if m.dims == 3:
        return prepare_volume(read_volume(path, limits), m.size, path)
    if _suffix(path) in VOLUME_SUFFIXES:
        raise UserError(f"{path}: a volume, but the {m.config.get('model')} model reads 2D "
                        "images; pass a run of a 3D dataset")
    return load_image(path, m.info.n_channels, m.size, limits)


# --- scoring ------------------------------------------------------------------------------------

def score(m: Model, batch_u8: np.ndarray) -> np.ndarray:
    """Probabilities for a batch in file layout, through the trainer's normalisation; for an
    entry of several members (or a flip), their mix (`EnsembleModel`)."""
    return m.probabilities(normalize(to_tensor_images(batch_u8, m.info)))


def describe(p: np.ndarray, info: DatasetInfo) -> dict[str, Any]:
    """The prediction for one input's probabilities: the class (single-label) or every label
    above THRESHOLD (multi-label), with names."""
    probs = [round(float(v), 4) for v in p]
    if info.multi_label:
        chosen = [i for i, v in enumerate(p) if v > THRESHOLD]
        return {"labels": [{"index": i, "label": info.labels[str(i)], "p": probs[i]}
                           for i in chosen],
                "probabilities": probs}
    top = int(np.argmax(p))
    return {"class": top, "label": info.labels[str(top)], "probabilities": probs}


def predict(run_dir: Path, dataset: str | None, inputs: list[Path],
            family: str | None = None, entry: str | None = None) -> tuple[Model, list[dict]]:
    """The model served (see module doc) and its predictions for image files (2D models) or
    volumes (3D models); each row holds the input, the prediction and any warnings about how
    the input was converted."""
    m = load_model(Path(run_dir), dataset, entry, family)
    loaded = [load_input(Path(p), m) for p in inputs]
    probs = score(m, np.stack([arr for arr, _ in loaded]))
    rows = [{"input": str(path), **describe(p, m.info), "warnings": notes}
            for path, p, (_, notes) in zip(inputs, probs, loaded, strict=True)]
    return m, rows


def served(m: Model) -> dict[str, Any]:
    """What the output says about the model: its directory, the board entry and the members
    (directory, family, seed, weight)."""
    return {"model": str(m.path), "dataset": m.info.flag,
            **(m.entry.as_dict() if m.entry is not None else {})}


def format_predictions(m: Model, rows: list[dict], fmt: str = "text") -> str:
    """`text`: the entry, then one line per input; `json`: {"model", "dataset", "entry",
    "kind", "picked", "tta", "members": [...], "predictions": [...]}."""
    about = served(m)
    if fmt == "json":
        return json.dumps({**about, "predictions": rows}, indent=2, ensure_ascii=False)
    lines = [f"model: {about['model']}"]
    if "entry" in about:
        members = about["members"]
        how = ("" if len(members) == 1 and not about["tta"] else
               f"; {len(members)} models' probabilities mixed by weight"
               + (", each also on the mirrored input" if about["tta"] else ""))
        lines.append(f"entry: {about['entry']}{' (picked)' if about['picked'] else ''}{how}")
    for r in rows:
        if "labels" in r:
            names = ", ".join(f"{x['label']} ({x['p']:.2f})" for x in r["labels"]) or "none"
            lines.append(f"{r['input']}: labels with p > {THRESHOLD}: {names}")
        else:
            lines.append(f"{r['input']}: class {r['class']} ({r['label']})  "
                         f"p={r['probabilities']}")
    return "\n".join(lines)
