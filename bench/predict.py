"""Classify image files with a model from a run directory's final phase.

Which model: the family with the best mean validation AUC for the dataset (selection on
validation, as everywhere), and of its seeds the one with the best validation AUC.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.data import dataset_info, normalize, to_tensor_images
from bench.errors import UserError


def choose_model(run_dir: Path, dataset: str, family: str | None = None) -> Path:
    table = run_dir / "final.parquet"
    if not table.exists():
        raise UserError(f"{run_dir} has no final.parquet; pass a run directory made by "
                        "`medbench run`")
    df = pd.read_parquet(table)
    df = df[(df.dataset == dataset) & (df.status == "ok")]
    if family:
        df = df[df.family == family]
    if df.empty:
        raise UserError(f"{run_dir} has no finished final model for {dataset}"
                        + (f" / {family}" if family else "") + "; check `medbench leaderboard`")
    best_family = df.groupby("family").val_auc.mean().idxmax()
    row = df[df.family == best_family].sort_values("val_auc", ascending=False).iloc[0]
    return run_dir / row.run_dir


def load_image(path: Path, channels: int, size: int) -> np.ndarray:
    """An image file -> the file layout of MedMNIST (H, W) or (H, W, 3), uint8, resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
    img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def predict(run_dir: Path, dataset: str, images: list[Path],
            family: str | None = None) -> tuple[Path, list[dict]]:
    from bench.models import create_model
    from bench.train import scores_from_logits

    info = dataset_info(dataset)
    if info.dims != 2:
        raise UserError("predict reads 2D image files; 3D volumes are not supported yet")
    model_dir = choose_model(Path(run_dir), dataset, family)
    saved = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=False)
    cfg = saved["config"]
    from bench.train import TrainConfig

    conf = TrainConfig.from_dict(cfg)
    model = create_model(conf.model, info.n_channels, info.n_classes, conf.size, **conf.model_hp)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    batch = np.stack([load_image(p, info.n_channels, conf.size) for p in images])
    x = normalize(to_tensor_images(batch, info))
    with torch.no_grad():
        probs = scores_from_logits(model(x), info.multi_label).numpy()
    out = []
    for path, p in zip(images, probs, strict=True):
        top = int(np.argmax(p))
        out.append({"image": str(path), "class": top, "label": info.labels[str(top)],
                    "probabilities": [round(float(v), 4) for v in p]})
    return model_dir, out
