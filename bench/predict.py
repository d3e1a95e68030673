"""Classify image files or volumes with a model from a run directory.

Which model: a `medbench train` directory holds one (`model.pt` at its top); in a directory with
`final.parquet` (`medbench run`, `medbench train --seeds`) it is the family with the best mean
validation AUC for the dataset (selection on validation, as everywhere), and of its seeds the
one with the best validation AUC.

Why it is careful about its inputs:

* `model.pt` is loaded with `torch.load(weights_only=True)`: a pickle can run any code when it is
  loaded, and run directories get copied around. A file holding anything but tensors and plain
  containers is refused with one clear error (a test plants a file-creating payload).
* Inputs are made to look like the training data, and nothing is changed silently: a colour
  image given to a greyscale model (or the reverse) is converted with a warning; a volume of
  another shape is resampled (trilinear) to the model's size; non-uint8 volumes are min-max
  scaled to 0-255, the range the model was trained on.
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
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.data import DatasetInfo, dataset_info, normalize, to_tensor_images
from bench.errors import UserError

THRESHOLD = 0.5  # multi-label: a label is predicted when its probability is above this
VOLUME_SUFFIXES = (".npy", ".nii", ".nii.gz")
NIFTI_EXTRA = "pip install 'medmnist-bench[nifti]'"


@dataclass
class LoadedModel:
    """A model ready to score inputs, with what is needed to prepare them."""

    path: Path  # the run directory it came from
    info: DatasetInfo
    size: int
    dims: int  # 2: images, 3: volumes (from the model registry)
    model: torch.nn.Module
    config: dict[str, Any] = field(default_factory=dict)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def choose_model(run_dir: Path, dataset: str | None, family: str | None = None) -> Path:
    """The directory of the model to use (see module doc)."""
    run_dir = Path(run_dir)
    if (run_dir / "model.pt").is_file():  # one `medbench train` run
        return run_dir
    table = run_dir / "final.parquet"
    if not table.exists():
        raise UserError(f"{run_dir} holds neither model.pt (a `medbench train` run) nor "
                        "final.parquet (a `medbench run`); pass one of those directories")
    df = pd.read_parquet(table)
    df = df[df.status == "ok"]
    if dataset is None:
        flags = sorted(df.dataset.unique())
        if len(flags) != 1:
            raise UserError(f"{run_dir} has models for {', '.join(flags) or 'no dataset'}; "
                            "choose one with --dataset")
        dataset = flags[0]
    df = df[df.dataset == dataset]
    if family:
        df = df[df.family == family]
    if df.empty:
        raise UserError(f"{run_dir} has no finished final model for {dataset}"
                        + (f" / {family}" if family else "") + "; check `medbench leaderboard`")
    best_family = df.groupby("family").val_auc.mean().idxmax()
    row = df[df.family == best_family].sort_values("val_auc", ascending=False).iloc[0]
    return run_dir / row.run_dir


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


def load_model(run_dir: Path, dataset: str | None = None,
               family: str | None = None) -> LoadedModel:
    """The chosen model in eval mode on the CPU."""
    from bench.models import create_model, get_entry
    from bench.train import TrainConfig

    model_dir = choose_model(Path(run_dir), dataset, family)
    saved = load_checkpoint(model_dir / "model.pt")
    conf = TrainConfig.from_dict(dict(saved["config"]))
    if dataset is not None and conf.dataset != dataset:
        raise UserError(f"{model_dir} holds a model for {conf.dataset}, not {dataset}; drop "
                        "--dataset or pass a run of that dataset")
    info = dataset_info(conf.dataset)
    model = create_model(conf.model, info.n_channels, info.n_classes, conf.size, **conf.model_hp)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return LoadedModel(model_dir, info, conf.size, get_entry(conf.model).dims, model,
                       dict(saved["config"]))


# --- inputs -------------------------------------------------------------------------------------

def load_image(path: Path, channels: int, size: int) -> tuple[np.ndarray, list[str]]:
    """An image file -> MedMNIST's file layout (H, W) or (H, W, 3), uint8, resized; plus a
    warning for each change a user would not expect (channel conversion)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
    notes = []
    grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
    if channels == 1 and not grey:
        notes.append(f"{path.name}: colour image ({img.mode}) converted to greyscale for a "
                     "greyscale model")
    elif channels == 3 and grey:
        notes.append(f"{path.name}: greyscale image converted to RGB (3 equal channels) for a "
                     "colour model")
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8), notes


def read_volume(path: Path) -> np.ndarray:
    """A (D, H, W) array from `.npy` or NIfTI (`.nii`, `.nii.gz`, through nibabel)."""
    kind = _suffix(path)
    if kind == ".npy":
        try:
            vol = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not a readable .npy array ({e})") from None
    elif kind in (".nii", ".nii.gz"):
        try:
            import nibabel
        except ImportError:
            raise UserError(f"{path}: reading NIfTI needs nibabel; install the extra: "
                            f"{NIFTI_EXTRA}") from None
        try:
            vol = np.asarray(nibabel.load(str(path)).get_fdata(dtype=np.float32))
        except Exception as e:  # nibabel raises many kinds for a bad file
            raise UserError(f"{path}: not a readable NIfTI file ({e})") from None
    else:
        raise UserError(f"{path}: a 3D model reads volumes ({', '.join(VOLUME_SUFFIXES)})")
    vol = np.squeeze(vol)
    if vol.ndim != 3:
        raise UserError(f"{path}: expected a volume of shape (D, H, W), got {vol.shape}")
    return vol


def prepare_volume(vol: np.ndarray, size: int, path: Path) -> tuple[np.ndarray, list[str]]:
    """A volume -> uint8 (size, size, size) like MedMNIST 3D files (see module doc)."""
    notes = []
    if vol.dtype != np.uint8:
        v = vol.astype(np.float32)
        lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
        v = np.nan_to_num((v - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(v))
        vol = np.clip(np.rint(v), 0, 255).astype(np.uint8)
        notes.append(f"{path.name}: {lo:g}..{hi:g} scaled to 0..255")
    if vol.shape != (size,) * 3:
        t = torch.from_numpy(vol.astype(np.float32))[None, None]
        t = torch.nn.functional.interpolate(t, size=(size,) * 3, mode="trilinear",
                                            align_corners=False)
        notes.append(f"{path.name}: resampled {tuple(vol.shape)} -> {(size,) * 3} (trilinear)")
        vol = t[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    return vol, notes


def load_input(path: Path, m: LoadedModel) -> tuple[np.ndarray, list[str]]:
    """One input file in the layout of the model's dataset files, plus warnings."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    if m.dims == 3:
        return prepare_volume(read_volume(path), m.size, path)
    if _suffix(path) in VOLUME_SUFFIXES:
        raise UserError(f"{path}: a volume, but the {m.config.get('model')} model reads 2D "
                        "images; pass a run of a 3D dataset")
    return load_image(path, m.info.n_channels, m.size)


# --- scoring ------------------------------------------------------------------------------------

def score(m: LoadedModel, batch_u8: np.ndarray) -> np.ndarray:
    """Probabilities for a batch in file layout, through the trainer's normalisation."""
    from bench.train import scores_from_logits

    x = normalize(to_tensor_images(batch_u8, m.info))
    with torch.no_grad():
        return scores_from_logits(m.model(x), m.info.multi_label).numpy().astype(np.float64)


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
            family: str | None = None) -> tuple[Path, list[dict]]:
    """Predictions for image files (2D models) or volumes (3D models); each row holds the
    input, the prediction and any warnings about how the input was converted."""
    m = load_model(Path(run_dir), dataset, family)
    loaded = [load_input(Path(p), m) for p in inputs]
    probs = score(m, np.stack([arr for arr, _ in loaded]))
    rows = [{"input": str(path), **describe(p, m.info), "warnings": notes}
            for path, p, (_, notes) in zip(inputs, probs, loaded, strict=True)]
    return m.path, rows


def format_predictions(model_dir: Path, rows: list[dict], fmt: str = "text") -> str:
    """`text`: one line per input; `json`: {"model": ..., "predictions": [...]}."""
    if fmt == "json":
        return json.dumps({"model": str(model_dir), "predictions": rows}, indent=2)
    lines = [f"model: {model_dir}"]
    for r in rows:
        if "labels" in r:
            names = ", ".join(f"{x['label']} ({x['p']:.2f})" for x in r["labels"]) or "none"
            lines.append(f"{r['input']}: labels with p > {THRESHOLD}: {names}")
        else:
            lines.append(f"{r['input']}: class {r['class']} ({r['label']})  "
                         f"p={r['probabilities']}")
    return "\n".join(lines)
