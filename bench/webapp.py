"""The page `medbench serve` shows: the runs' leaderboard and a predictor, for people who would
rather look than type.

Nothing here computes a result of its own: the leaderboard is `bench.leaderboard`'s (means,
CIs, verdicts against the published rows), the figures are the ones `medbench report` wrote, and
a prediction goes through `bench.predict`'s functions (model choice, `weights_only=True`
loading, input checks and conversion, scoring, multi-label thresholding), so the page shows
exactly what `medbench predict --format json` prints for the same file. The predictor serves
board entries as `medbench predict` does (`bench.picked`): the run's pick by default, a seed
ensemble or blend with all its members, named on the page with their weights.

Uploads are bounded twice: the uploader takes only the file types the chosen model reads, up to
`bench.serve.upload_limit_mb` (the server enforces the same limit), and the file is decoded
with `bench.decode.PAGE_LIMITS` (pixels, voxels and decompressed bytes checked before
decoding), so a small crafted file is one clear message, not gigabytes in this process.

Streamlit runs this file as a script (`python -m bench.serve run bench/webapp.py -- RUN_DIR...`);
the helpers above `main` need no Streamlit and are tested directly.
"""

from __future__ import annotations

import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIEWS = ("Leaderboard", "Predict")
# Sort choices: board column and direction (metrics best first, names A-Z).
SORTS = {"test AUC": ("test_auc_mean", False), "test ACC": ("test_acc_mean", False),
         "validation score": ("val_score", False), "entry": ("family", True)}


# --- leaderboard ----------------------------------------------------------------------------

def mean_std_ci(row: pd.Series, metric: str) -> str:
    """`0.871 ± 0.012 [0.841, 0.902]` for one board row, as in the markdown board."""
    mean, std = row[f"test_{metric}_mean"], row[f"test_{metric}_std"]
    lo, hi = row[f"{metric}_lo"], row[f"{metric}_hi"]
    if pd.isna(mean):
        return "-"
    text = f"{mean:.3f}" + ("" if pd.isna(std) else f" ± {std:.3f}")
    return text if pd.isna(lo) else f"{text} [{lo:.3f}, {hi:.3f}]"


def sort_board(board: pd.DataFrame, by: str) -> pd.DataFrame:
    """Rows ordered by one of SORTS (missing values last), stable."""
    column, ascending = SORTS[by]
    if column not in board.columns:  # e.g. a board made before val_score existed
        return board
    return board.sort_values(column, ascending=ascending, na_position="last", kind="stable")


def entry_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One dataset's board rows as the page's table: numbers stay numbers (so clicking a
    column header sorts them numerically), CIs and published comparisons beside them."""

    def ci(lo: float, hi: float) -> str:
        return "" if pd.isna(lo) else f"[{lo:.3f}, {hi:.3f}]"

    def best(value: float, method: str | None) -> str:
        return "-" if pd.isna(value) else f"{value:.3f} ({method})"

    r = rows.reset_index(drop=True)
    table = pd.DataFrame({  # what decides first (metric, CI, verdicts), then the details
        "run": r["run"],
        "entry": r["family"],
        "picked": r["picked"].astype(bool) if "picked" in r else False,
        "seeds": r["n_seeds"].astype(int),
        "AUC": r["test_auc_mean"], "AUC std": r["test_auc_std"],
        "AUC 95% CI": [ci(lo, hi) for lo, hi in zip(r["auc_lo"], r["auc_hi"], strict=True)],
        "AUC vs ref": r["verdict_auc_vs_resnet18"],
        "AUC vs best": r["verdict_auc_vs_best"],
        "ACC": r["test_acc_mean"], "ACC std": r["test_acc_std"],
        "ACC 95% CI": [ci(lo, hi) for lo, hi in zip(r["acc_lo"], r["acc_hi"], strict=True)],
        "ACC vs ref": r["verdict_acc_vs_resnet18"],
        "ACC vs best": r["verdict_acc_vs_best"],
        "reference": r["ref_method"],
        "ref AUC": r["ref_auc"], "Δ AUC": r["delta_auc_vs_resnet18"],
        "ref ACC": r["ref_acc"], "Δ ACC": r["delta_acc_vs_resnet18"],
        "best published AUC": [best(v, m) for v, m in zip(r["best_auc"], r["best_auc_method"],
                                                            strict=True)],
        "best published ACC": [best(v, m) for v, m in zip(r["best_acc"], r["best_acc_method"],
                                                            strict=True)],
        "size": r["size"].astype(int),
        "failed": r["n_failed"].astype(int),
        "val score": r["val_score"] if "val_score" in r else r["val_auc_mean"],
        "trials": r["trials"].astype(int),
        "device-s": r["device_s"].round(0),
    })
    if table["run"].nunique() == 1:
        table = table.drop(columns="run")
    return table


def report_figures(run_dir: Path, flags: list[str]) -> tuple[dict[str, list[Path]], list[Path]]:
    """PNG figures `medbench report` left in the run directory (`<report>_figures/`): per
    dataset (file names start with the flag; the comparison with the published numbers first),
    and the rest (across datasets)."""
    per: dict[str, list[Path]] = {f: [] for f in flags}
    rest: list[Path] = []
    pngs = sorted(Path(run_dir).glob("*_figures/*.png"),
                  key=lambda p: (not p.stem.endswith("_vs_published"), p.name))
    for png in pngs:
        flag = next((f for f in sorted(flags, key=len, reverse=True)
                     if png.name.startswith(f"{f}_")), None)
        (per[flag] if flag else rest).append(png)
    return per, rest


# --- predictor --------------------------------------------------------------------------------

def predictable_entries(board: pd.DataFrame, run: str, flag: str) -> tuple[list[str], int]:
    """The entries of a (run, dataset) that can score a file (`bench.picked.servable_rows`:
    single models, seed ensembles, blends), and the index of the default: the run's pick,
    served as the board scored it."""
    from bench.picked import servable_rows

    names = list(servable_rows(board, run, flag)["family"])
    return names, 0


def accepted_suffixes(dims: int) -> tuple[str, ...]:
    """The file types the uploader offers for a model: images for 2D, volumes for 3D."""
    from bench.decode import VOLUME_SUFFIXES

    return IMAGE_SUFFIXES if dims == 2 else VOLUME_SUFFIXES


def check_upload(name: str, dims: int, flag: str, size: int | None = None,
                 max_mb: int | None = None) -> None:
    """A clear error for a file the model cannot take, before any decoding: a file type no
    model reads (image vs volume mismatches: bench.predict says which the model needs), or a
    file over the upload limit (the server refuses those first; this covers other callers)."""
    from bench.decode import VOLUME_SUFFIXES, suffix

    kind = suffix(name)
    if kind not in IMAGE_SUFFIXES + VOLUME_SUFFIXES:
        wanted = (f"a 2D image ({', '.join(IMAGE_SUFFIXES)})" if dims == 2
                  else f"a 3D volume ({', '.join(VOLUME_SUFFIXES)})")
        raise UserError(f"{name}: {kind or 'no extension'} is not a file type the predictor "
                        f"reads; the {flag} model takes {wanted}")
    if size is not None and max_mb is not None and size > max_mb * 2**20:
        raise UserError(f"{name}: {size / 2**20:.1f} MB is over this page's {max_mb} MB upload "
                        "limit; downscale or crop it first (the model sees at most "
                        "224 px, or 64^3 voxels)")


@dataclass
class UploadPrediction:
    """What the page shows for one uploaded file."""

    row: dict[str, Any]  # as in `medbench predict --format json`: input, class/labels, ...
    model_input: np.ndarray  # the file as the model saw it (uint8, dataset layout)
    warnings: list[str] = field(default_factory=list)


def predict_upload(model: Any, name: str, data: bytes, max_mb: int | None = None,
                   limits: Any = None) -> UploadPrediction:
    """Score one uploaded file with a loaded entry (`bench.predict.load_entry`), decoding it within
    `limits` (default `bench.decode.PAGE_LIMITS`)."""
    from bench.decode import PAGE_LIMITS
    from bench.predict import describe, load_input, score

    check_upload(name, model.dims, model.info.flag, len(data), max_mb)
    with tempfile.TemporaryDirectory(prefix="medbench-upload-") as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(data)
        try:
            arr, notes = load_input(path, model, limits or PAGE_LIMITS)
        except UserError as e:  # name the file as the user knows it, not our temp path
            raise UserError(str(e).replace(str(path), Path(name).name)) from None
    probs = score(model, arr[None])[0]
    row = {"input": Path(name).name, **describe(probs, model.info), "warnings": notes}
    return UploadPrediction(row, arr, notes)


def probability_frame(row: dict[str, Any], labels: dict[str, str],
                      multi_label: bool) -> pd.DataFrame:
    """Per class: index, name, probability (4 decimals, as in the JSON) and whether chosen."""
    from bench.predict import THRESHOLD

    probs = row["probabilities"]
    chosen = ({x["index"] for x in row["labels"]} if multi_label else {row["class"]})
    return pd.DataFrame({
        "class": list(range(len(probs))),
        "label": [labels[str(i)] for i in range(len(probs))],
        "probability": [f"{p:.4f}" for p in probs],
        "predicted": ["yes" if i in chosen else "" for i in range(len(probs))],
    }).assign(**({"threshold": f"> {THRESHOLD}"} if multi_label else {}))


def preview(arr: np.ndarray, dims: int, px: int = 196) -> np.ndarray:
    """What the model saw, enlarged without smoothing; a volume's middle slice."""
    from PIL import Image

    img = arr[arr.shape[0] // 2] if dims == 3 else arr
    return np.asarray(Image.fromarray(img).resize((px, px), Image.NEAREST))


# --- the page ---------------------------------------------------------------------------------

def main(run_dirs: list[str]) -> None:
    import streamlit as st

    from bench.serve import run_dir_problem

    st.set_page_config(page_title="MedMNIST-Bench", layout="wide")
    st.title("MedMNIST-Bench")
    problems = [p for p in (run_dir_problem(d) for d in run_dirs) if p]
    for problem in problems:
        st.error(problem)
    good = [d for d in run_dirs if run_dir_problem(d) is None]
    if not run_dirs:
        st.error("No run directory given: start the page with `medbench serve runs/<name>`.")
    if not good:
        st.stop()
    with st.sidebar:
        view = st.radio("View", VIEWS, key="view")
        st.caption("Runs served: " + ", ".join(f"`{Path(d).name}`" for d in good))
        st.caption("This page has no authentication; it is meant for your own machine.")
    try:
        board, roots, seeds = _board(tuple(good), _stamps(good))
    except UserError as e:
        st.error(str(e))
        st.stop()
    if board.empty:
        st.error("The run directories hold no final results to show.")
        st.stop()
    if view == "Leaderboard":
        _leaderboard_view(st, board, roots)
    else:
        _predict_view(st, board, roots, seeds)


def _stamps(run_dirs: list[str]) -> tuple[float, ...]:
    """Modification times of the final tables: the cache key that notices a finished run."""
    from bench.rundir import RunDir

    return tuple(RunDir(d).final_mtime() for d in run_dirs)


def _board(run_dirs: tuple[str, ...], stamps: tuple[float, ...]
           ) -> tuple[pd.DataFrame, dict[str, str], pd.DataFrame]:
    import streamlit as st

    @st.cache_data(show_spinner="Building the leaderboard (bootstrap CIs)...")
    def build(run_dirs: tuple[str, ...], stamps: tuple[float, ...]):
        from bench.leaderboard import build_leaderboard, load_seeds

        seeds = load_seeds(list(run_dirs))
        roots = dict(zip(seeds["run"], seeds["root"], strict=True))
        return build_leaderboard(list(run_dirs)), roots, seeds

    return build(run_dirs, stamps)


def _leaderboard_view(st: Any, board: pd.DataFrame, roots: dict[str, str]) -> None:
    from bench.leaderboard import format_board

    st.header("Leaderboard")
    st.caption("Test ACC and AUC: mean and std over fresh seeds, 95% bootstrap CI over test "
               "images and seeds. A verdict says above or below a published number only when "
               "the CI excludes it. Picked: the entry the run chooses per dataset, on "
               "validation only. Click a column header to sort by it.")
    by = st.selectbox("Sort entries by", list(SORTS), key="sort")
    numbers = {"column_config": {c: st.column_config.NumberColumn(format="%.3f")
                                 for c in ("AUC", "AUC std", "ACC", "ACC std", "ref AUC",
                                           "Δ AUC", "ref ACC", "Δ ACC", "val score")}}
    flags = sorted(board["dataset"].unique())
    figures = {run: report_figures(Path(root), flags) for run, root in roots.items()}
    for flag in flags:
        rows = sort_board(board[board["dataset"] == flag], by)
        st.subheader(f"{flag} ({rows['task'].iloc[0]})")
        st.dataframe(entry_table(rows), hide_index=True, placeholder="-", **numbers)
        for note in (n for n in rows["baseline_note"].unique() if n):
            st.caption(f"Note: {note}.")
        pngs = [p for per, _ in figures.values() for p in per.get(flag, [])]
        if pngs:
            with st.expander(f"Report figures for {flag} ({len(pngs)})", expanded=True):
                for i in range(0, len(pngs), 2):
                    for col, png in zip(st.columns(2), pngs[i:i + 2], strict=False):
                        col.image(str(png), caption=png.name)
        else:
            st.caption(f"No report figures for {flag} in the run directory; "
                       "`medbench report RUN_DIR` makes them.")
    rest = [p for _, other in figures.values() for p in other]
    if rest:
        with st.expander(f"Figures across datasets ({len(rest)})"):
            for png in rest:
                st.image(str(png), caption=png.name)
    c1, c2 = st.columns(2)
    c1.download_button("Leaderboard as markdown", format_board(board, "md"),
                       file_name="leaderboard.md")
    c2.download_button("Leaderboard as CSV", format_board(board, "csv"),
                       file_name="leaderboard.csv")


def _model(entry: Any, stamp: float) -> Any:
    """The entry's members loaded once per (run, dataset, entry, final table)."""
    import streamlit as st

    @st.cache_resource(show_spinner="Loading the model...", max_entries=8)
    def load(root: str, flag: str, name: str, stamp: float, _entry: Any):
        from bench.predict import load_entry

        return load_entry(_entry)

    return load(str(entry.run_dir), entry.dataset, entry.name, stamp, entry)


def members_md(entry: Any) -> str:
    """The entry and what answers for it: each member's seed run and weight."""
    parts = [f"`{m.family}` seed run `{Path(m.run_dir).name}` (weight {m.weight:.3f})"
             for m in entry.members]
    notes = (["probabilities mixed by weight"] if len(parts) > 1 else []) + \
        (["each member also scores the file mirrored left-right"] if entry.tta else [])
    return (f"**Entry**: {entry.name}{' (picked on validation)' if entry.picked else ''}  \n"
            f"**Members** ({len(parts)}): " + "; ".join(parts)
            + "".join(f"; {n}" for n in notes) + ".  \nLoaded with `weights_only=True`.")


def _upload_limit(roots: tuple[str, ...]) -> int:
    """The page's upload limit in MB: what `medbench serve` gave the server for these runs
    (`bench.serve.upload_limit_mb`), and never above the server's own setting."""
    import streamlit as st

    from bench.serve import upload_limit_mb

    server = int(st.get_option("server.maxUploadSize") or 0)
    mine = upload_limit_mb(roots)
    return min(mine, server) if server > 0 else mine


def _predict_view(st: Any, board: pd.DataFrame, roots: dict[str, str],
                  seeds: pd.DataFrame) -> None:
    from bench.picked import entry_from_row
    from bench.predict import THRESHOLD, VOLUME_SUFFIXES, format_predictions
    from bench.rundir import RunDir

    st.header("Predict")
    pairs = list(board[board["n_seeds"] > 0][["run", "dataset"]].drop_duplicates()
                 .itertuples(index=False, name=None))
    multi_run = len(roots) > 1
    c1, c2 = st.columns(2)
    run, flag = c1.selectbox("Dataset", pairs, key="dataset",
                             format_func=lambda p: f"{p[1]} (run {p[0]})" if multi_run else p[1])
    names, default = predictable_entries(board, run, flag)
    if not names:
        st.error(f"{flag}: the run has no finished model to predict with.")
        return
    name = c2.selectbox("Entry", names, index=default, key=f"entry-{run}-{flag}",
                        help="Default: the run's pick, served as the board scored it (a seed "
                             "ensemble averages its seeds, a blend applies its weights).")
    root = roots[run]
    board_row = board[(board["run"] == run) & (board["dataset"] == flag)
                & (board["family"] == name)].iloc[0]
    try:
        entry = entry_from_row(board_row, seeds)
        model = _model(entry, RunDir(root).final_mtime())
    except UserError as e:
        st.error(str(e))
        return
    kind = ("a 2D image (PNG or JPEG)" if model.dims == 2
            else f"a 3D volume ({', '.join(VOLUME_SUFFIXES)}; NIfTI needs the nifti extra)")
    max_mb = _upload_limit(tuple(roots.values()))
    upload = st.file_uploader(f"Upload {kind}", key=f"upload-{run}-{flag}",
                              type=list(accepted_suffixes(model.dims)), max_upload_size=max_mb,
                              help=f"Up to {max_mb} MB; larger images are refused, not "
                                   "decoded.")
    left, right = st.columns([3, 2])
    with right:
        st.markdown(members_md(entry))
        m1, m2, m3 = st.columns(3)
        m1.metric("test AUC (this entry)", _num(board_row["test_auc_mean"]))
        m2.metric("test ACC (this entry)", _num(board_row["test_acc_mean"]))
        m3.metric("val score (this entry)", _num(board_row["val_score"]))
        st.markdown(f"**Entry over {int(board_row['n_seeds'])} seeds**  \n"
                    f"AUC {mean_std_ci(board_row, 'auc')}  \nACC {mean_std_ci(board_row, 'acc')}")
    if upload is None:
        left.info(f"Upload {kind} to classify it with the {flag} model.")
        return
    try:
        result = predict_upload(model, upload.name, upload.getvalue(), max_mb)
    except UserError as e:
        left.error(str(e))
        return
    row, info = result.row, model.info
    with left:
        for note in result.warnings:
            st.warning(note)
        if info.multi_label:
            chosen = ", ".join(f"{x['label']} ({x['p']:.4f})" for x in row["labels"])
            st.success(f"Predicted labels (p > {THRESHOLD}): {chosen or 'none'}")
        else:
            st.success(f"Predicted class {row['class']}: {row['label']} "
                       f"(p = {row['probabilities'][row['class']]:.4f})")
        table = probability_frame(row, info.labels, info.multi_label)
        _bar_chart(st, table, info.multi_label)
        st.table(table, hide_index=True)
        with st.expander("As `medbench predict --format json` prints it"):
            st.code(format_predictions(model, [result.row], "json"), language="json")
    with right:
        st.image(preview(result.model_input, model.dims),
                 caption=f"{upload.name} as the model sees it "
                         f"({'middle slice, ' if model.dims == 3 else ''}{model.size} px)")


def _num(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _bar_chart(st: Any, table: pd.DataFrame, multi_label: bool) -> None:
    import altair as alt

    from bench.predict import THRESHOLD

    data = table.assign(p=table["probability"].astype(float),
                        name=[f"{c}: {lab}" for c, lab in zip(table["class"], table["label"],
                                                              strict=True)])
    bars = alt.Chart(data).mark_bar().encode(
        x=alt.X("p:Q", title="probability", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("name:N", title=None, sort=None),
        color=alt.condition(alt.datum.predicted == "yes", alt.value("#1f4e99"),
                            alt.value("#9ecae1")),
        tooltip=["class", "label", "probability"])
    if multi_label:
        bars += alt.Chart(pd.DataFrame({"t": [THRESHOLD]})).mark_rule(
            strokeDash=[4, 4]).encode(x="t:Q")
    st.altair_chart(bars, width="stretch")


if __name__ == "__main__":  # `streamlit run bench/webapp.py -- RUN_DIR...`
    main(sys.argv[1:])
