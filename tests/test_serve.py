"""`medbench serve`: safe defaults, clear errors, the page (Streamlit's AppTest, in-process), and
the real app in headless Chromium on a real BreastMNIST run.

The browser test needs Debian's `chromium` + `chromium-driver` (`.ci/run` installs them) and
Selenium (the dev extra); it skips with the reason when they are missing. Two environment
variables reuse it to make the README's screenshots:
`MEDBENCH_WEB_RUN=<run dir>` serves that run instead of training a small one, and
`MEDBENCH_WEB_SCREENSHOTS=<folder>` saves web-leaderboard.png and web-predict.png there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import invoke, run_main
from PIL import Image

from bench import serve
from bench.data import write_synthetic
from bench.errors import UserError
from bench.results import FINAL_COLUMNS, write_table

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: object) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


# --- launcher: bind address, warnings, missing extra, bad run directories --------------------

@pytest.fixture()
def launched(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the Streamlit command instead of starting a server."""
    calls: list[list[str]] = []

    class FakePopen:
        def __init__(self, cmd: list[str]) -> None:
            calls.append(cmd)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(serve.subprocess, "Popen", FakePopen)
    real = serve.importlib.util.find_spec  # the launcher's checks do not need Streamlit itself
    monkeypatch.setattr(serve.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "streamlit" else real(name, *a))
    return calls


@pytest.fixture()
def fake_run(tmp_path: Path) -> Path:
    """A run directory with one finished final model row (enough for the launcher's checks)."""
    run = tmp_path / "run"
    write_table(run / "final.parquet", [{"dataset": "breastmnist", "family": "cnn_small",
                                         "seed": 0, "size": 28, "status": "ok",
                                         "run_dir": "final/x"}], FINAL_COLUMNS)
    return run


def _option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_serve_binds_loopback_by_default(launched, fake_run, monkeypatch, capsys) -> None:
    code, out, err = run_main(monkeypatch, capsys, "serve", fake_run)
    assert code == 0, err
    [cmd] = launched
    assert _option(cmd, "--server.address") == "127.0.0.1"
    assert _option(cmd, "--server.port") == "8501"
    assert _option(cmd, "--browser.gatherUsageStats") == "false"
    assert cmd[cmd.index("--") + 1:] == [str(fake_run.resolve())]
    assert "http://127.0.0.1:8501" in out and "authentication" not in err


def test_serve_on_all_interfaces_warns_about_no_authentication(launched, fake_run, monkeypatch,
                                                               capsys) -> None:
    code, _, err = run_main(monkeypatch, capsys, "serve", fake_run, "--host", "0.0.0.0",
                             "--port", "9000")
    assert code == 0
    assert _option(launched[0], "--server.address") == "0.0.0.0"
    assert "warning: listening on 0.0.0.0:9000" in err and "NO authentication" in err


def test_serve_allows_loopback_host_names_only_and_sizes_uploads(launched, fake_run,
                                                                monkeypatch, capsys) -> None:
    code, _, err = run_main(monkeypatch, capsys, "serve", fake_run)
    assert code == 0, err
    [cmd] = launched
    assert cmd[1:4] == ["-m", "bench.serve", "run"]  # through the launcher (no outside look-up)
    hosts = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--server.allowedHosts"]
    assert hosts == ["localhost", "127.0.0.1", "::1"]
    assert _option(cmd, "--server.maxUploadSize") == "8"  # not Streamlit's 200
    launched.clear()
    code, _, _ = run_main(monkeypatch, capsys, "serve", fake_run, "--host", "10.1.2.3",
                          "--allow-host", "bench.example.org")
    hosts = [launched[0][i + 1] for i, a in enumerate(launched[0])
             if a == "--server.allowedHosts"]
    assert hosts == ["localhost", "127.0.0.1", "::1", "10.1.2.3", "bench.example.org"]
    assert "attacker.example" not in hosts


def test_upload_limit_follows_the_largest_model_input(tmp_path) -> None:
    rows = [{"dataset": "organmnist3d", "family": "cnn3d_small", "seed": 0, "size": 64,
             "status": "ok", "run_dir": "x"}]
    write_table(tmp_path / "r3d" / "final.parquet", rows, FINAL_COLUMNS)
    assert serve.upload_limit_mb([tmp_path / "r3d"]) == 16  # 64^3 float32 x 16
    rows[0].update(size=28)
    write_table(tmp_path / "small" / "final.parquet", rows, FINAL_COLUMNS)
    assert serve.upload_limit_mb([tmp_path / "small"]) == serve.MIN_UPLOAD_MB


def test_the_launcher_never_asks_an_outside_service_for_the_ip(monkeypatch) -> None:
    pytest.importorskip("streamlit", reason="the web extra (Streamlit) is not installed")
    import requests
    from streamlit import net_util

    def refuse(*a, **k):
        raise AssertionError(f"outside look-up: {a}")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(net_util, "get_external_ip", net_util.get_external_ip)  # restored after
    monkeypatch.setattr(net_util, "_external_ip", None)
    serve.no_outside_lookups()
    assert net_util.get_external_ip() is None


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.0.0.2", True),
                                           ("localhost", True), ("::1", True),
                                           ("0.0.0.0", False), ("::", False),
                                           ("192.168.1.5", False), ("myhost", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert serve.is_loopback(host) is loopback
    assert (serve.exposure_warning(host, 8501) is None) is loopback


def test_missing_web_extra_names_it(launched, fake_run, monkeypatch, capsys) -> None:
    monkeypatch.setattr(serve.importlib.util, "find_spec",
                        lambda name, *a: None if name == "streamlit" else object())
    code, _, err = run_main(monkeypatch, capsys, "serve", fake_run)
    assert code == 2 and not launched
    assert err.startswith("error: ") and "medmnist-bench[web]" in err and "Traceback" not in err


def _all_failed_run(tmp_path: Path) -> Path:
    run = tmp_path / "failed"
    write_table(run / "final.parquet", [{"dataset": "breastmnist", "family": "mlp", "seed": 0,
                                         "size": 28, "status": "failed", "run_dir": "x"}],
                FINAL_COLUMNS)
    return run


@pytest.mark.parametrize("case,message", [
    ("empty", r"empty \(no final.parquet\)"),
    ("missing", "no such directory"),
    ("unfinished", r"not a finished run \(no final.parquet\)"),
    ("all failed", "no finished final model"),
])
def test_bad_run_directories_are_refused_before_starting(case, message, launched, tmp_path,
                                                         monkeypatch, capsys) -> None:
    run = {"empty": tmp_path / "empty", "missing": tmp_path / "nope",
           "unfinished": tmp_path / "busy"}.get(case)
    if case == "empty":
        run.mkdir()
    elif case == "unfinished":
        (run / "trials").mkdir(parents=True)
    elif case == "all failed":
        run = _all_failed_run(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "serve", run)
    assert code == 2 and not launched
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(message, err), err


def test_bad_port_is_a_user_error(fake_run) -> None:
    with pytest.raises(UserError, match="--port 70000"):
        serve.serve([fake_run], port=70000)


# --- the page, in-process (Streamlit's AppTest) -------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path) -> dict[str, Path]:
    """Real `medbench train --seeds` runs on synthetic files: a 2D BreastMNIST run with two
    seeds (single and ensemble entries, a picked one), a multi-label ChestMNIST run and a 3D
    OrganMNIST3D run."""
    root = tmp_path_factory.mktemp("serve")
    data = root / "data"
    write_synthetic("breastmnist", data, n=(64, 32, 40), seed=1)
    breast, organ = root / "breast", root / "organ3d"
    _cli("train", "--dataset", "breastmnist", "--model", "cnn_small", "--epochs", 2,
         "--seeds", "0,1", "--data-dir", data, "--no-verify", "--device", "cpu",
         "--set", "threads=1", "--out", breast)
    _cli("train", "--dataset", "organmnist3d", "--model", "cnn3d_small", "--epochs", 1,
         "--seeds", "0", "--data-dir", synth_dir, "--no-verify", "--device", "cpu",
         "--set", "threads=1", "--out", organ)
    chest = root / "chest"
    _cli("train", "--dataset", "chestmnist", "--model", "cnn_small", "--epochs", 1,
         "--seeds", "0", "--data-dir", synth_dir, "--no-verify", "--device", "cpu",
         "--set", "threads=1", "--out", chest)
    chest_png = root / "chest_test0.png"
    Image.fromarray(np.load(synth_dir / "chestmnist.npz")["test_images"][0]).save(chest_png)
    png = root / "breast_test3.png"
    Image.fromarray(np.load(data / "breastmnist.npz")["test_images"][3]).save(png)
    npy = root / "organ_test0.npy"
    np.save(npy, np.load(synth_dir / "organmnist3d.npz")["test_images"][0])
    return {"breast": breast, "organ": organ, "chest": chest, "png": png, "npy": npy,
            "chest_png": chest_png}


def _page(run_dirs: list[str]) -> None:
    from bench.webapp import main

    main(run_dirs)


def _app(*run_dirs: Path):
    testing = pytest.importorskip("streamlit.testing.v1",
                                  reason="the web extra (Streamlit) is not installed")
    at = testing.AppTest.from_function(_page, args=([str(p) for p in run_dirs],),
                                                 default_timeout=300)
    return at.run()


def _predict_page(*run_dirs: Path):
    at = _app(*run_dirs)
    return at.sidebar.radio(key="view").set_value("Predict").run()


def test_leaderboard_view_shows_the_board_and_sorts(trained) -> None:
    from bench.leaderboard import build_leaderboard

    at = _app(trained["breast"])
    assert not at.exception and not at.error
    assert [h.value for h in at.subheader] == ["breastmnist (binary-class)"]
    shown = at.dataframe[0].value
    board = build_leaderboard(trained["breast"])
    assert sorted(shown["entry"]) == sorted(board["family"])
    for _, r in board.iterrows():
        row = shown[shown["entry"] == r["family"]].iloc[0]
        assert row["AUC"] == pytest.approx(r["test_auc_mean"])
        assert row["ACC"] == pytest.approx(r["test_acc_mean"])
        assert row["AUC vs ref"] == r["verdict_auc_vs_resnet18"]
        assert row["picked"] == r["picked"]
        assert row["AUC 95% CI"].startswith("[")
    assert list(shown["AUC"]) == sorted(shown["AUC"], reverse=True)  # default: test AUC
    at.selectbox(key="sort").set_value("entry").run()
    assert list(at.dataframe[0].value["entry"]) == sorted(board["family"])
    assert "No report figures for breastmnist" in " ".join(c.value for c in at.caption)


def test_leaderboard_view_shows_report_figures(trained, tmp_path) -> None:
    run = tmp_path / "with-report"
    shutil.copytree(trained["breast"], run)
    figs = run / "report_figures"
    figs.mkdir()
    for name in ("breastmnist_vs_published.png", "cost.png"):
        Image.new("RGB", (40, 30), "white").save(figs / name)
    at = _app(run)
    assert not at.exception
    labels = [e.label for e in at.expander]
    assert "Report figures for breastmnist (1)" in labels
    assert "Figures across datasets (1)" in labels


def test_report_figures_of_several_datasets_all_show(tmp_path) -> None:
    """The figure columns once shadowed the table's column settings: the second dataset's
    table raised once the first had figures."""
    from fake_run import make_run

    run = make_run(tmp_path)
    figs = run / "report_figures"
    figs.mkdir()
    for flag in ("breastmnist", "retinamnist"):
        Image.new("RGB", (40, 30), "white").save(figs / f"{flag}_vs_published.png")
    at = _app(run)
    assert not at.exception and len(at.dataframe) == 2
    labels = [e.label for e in at.expander]
    assert "Report figures for breastmnist (1)" in labels
    assert "Report figures for retinamnist (1)" in labels


def test_predictor_matches_medbench_predict_json(trained) -> None:
    at = _predict_page(trained["breast"])
    assert not at.exception and not at.error
    from bench.leaderboard import build_leaderboard

    board = build_leaderboard(trained["breast"])
    entry = at.selectbox[1]
    assert entry.value == board.loc[board["picked"], "family"].item()  # the run's pick
    png = trained["png"]
    at.file_uploader[0].set_value((png.name, png.read_bytes(), "image/png")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    expected = json.loads(_cli("predict", png, "--run", trained["breast"], "--dataset",
                               "breastmnist", "--format", "json"))["predictions"][0]
    assert at.success[0].value.startswith(f"Predicted class {expected['class']}: "
                                          f"{expected['label']} ")
    table = at.table[0].value
    assert list(table["probability"]) == [f"{p:.4f}" for p in expected["probabilities"]]
    assert list(table["predicted"]).index("yes") == expected["class"]
    metric_labels = [m.label for m in at.metric]
    assert "test AUC (this entry)" in metric_labels and "test ACC (this entry)" in metric_labels


def test_multi_label_predictions_are_thresholded_like_predict(trained) -> None:
    at = _predict_page(trained["chest"])
    png = trained["chest_png"]
    at.file_uploader[0].set_value((png.name, png.read_bytes(), "image/png")).run()
    assert not at.exception and not at.error
    expected = json.loads(_cli("predict", png, "--run", trained["chest"], "--format",
                               "json"))["predictions"][0]
    table = at.table[0].value
    assert len(table) == 14
    assert list(table["probability"]) == [f"{p:.4f}" for p in expected["probabilities"]]
    chosen = [x["index"] for x in expected["labels"]]
    assert [i for i, v in enumerate(table["predicted"]) if v == "yes"] == chosen
    assert chosen == [i for i, p in enumerate(expected["probabilities"]) if p > 0.5]
    names = ", ".join(f"{x['label']} ({x['p']:.4f})" for x in expected["labels"]) or "none"
    assert at.success[0].value == f"Predicted labels (p > 0.5): {names}"


def test_probability_table_marks_every_label_above_the_threshold() -> None:
    from bench.data import dataset_info
    from bench.predict import describe
    from bench.webapp import probability_frame

    info = dataset_info("chestmnist")
    p = np.full(14, 0.1)
    p[[2, 9]] = [0.7, 0.51]
    table = probability_frame(describe(p, info), info.labels, multi_label=True)
    assert [i for i, v in enumerate(table["predicted"]) if v == "yes"] == [2, 9]
    assert table["probability"][9] == "0.5100"


def test_the_uploader_takes_only_the_models_file_types_and_size(trained) -> None:
    at = _predict_page(trained["breast"])
    uploader = at.file_uploader[0].proto
    assert list(uploader.type) == [".png", ".jpg", ".jpeg"]
    assert uploader.max_upload_size_mb == serve.upload_limit_mb([trained["breast"]]) == 8
    at = _predict_page(trained["organ"])
    assert list(at.file_uploader[0].proto.type) == [".npy", ".nii", ".nii.gz"]


@pytest.fixture(scope="module")
def models(trained) -> dict[str, object]:
    from bench.predict import load_model

    return {"breast": load_model(trained["breast"], "breastmnist", "cnn_small"),
            "organ": load_model(trained["organ"])}


def test_wrong_file_type_is_named(models) -> None:
    from bench.webapp import predict_upload

    with pytest.raises(UserError) as e:
        predict_upload(models["breast"], "notes.txt", b"hello")
    assert str(e.value).startswith("notes.txt: .txt is not a file type the predictor reads")
    assert "2D image (.png, .jpg, .jpeg)" in str(e.value)


def test_a_file_over_the_upload_limit_is_refused_before_decoding(models) -> None:
    from bench.webapp import predict_upload

    with pytest.raises(UserError, match=r"x.png: 9.0 MB is over this page's 8 MB upload limit"):
        predict_upload(models["breast"], "x.png", b"\0" * (9 << 20), 8)


def test_a_volume_given_to_a_2d_model_is_refused(trained, models) -> None:
    from bench.webapp import predict_upload

    npy = trained["npy"]
    with pytest.raises(UserError) as e:
        predict_upload(models["breast"], npy.name, npy.read_bytes())
    assert str(e.value).startswith(f"{npy.name}: a volume, but") and "2D images" in str(e.value)
    assert "medbench-upload-" not in str(e.value)  # the user's file name, not our temp path


def test_the_page_names_a_bomb_without_decoding_it(trained, tmp_path) -> None:
    from bad_inputs import png_header_only

    at = _predict_page(trained["breast"])
    png = png_header_only(tmp_path / "bomb.png", 6000, 6000)
    at.file_uploader[0].set_value((png.name, png.read_bytes(), "image/png")).run()
    assert not at.exception
    [error] = at.error
    assert error.value.startswith("bomb.png: 6000x6000 pixels (36 Mpx) is more than this "
                                  "predictor decodes (17 Mpx)")


def test_an_image_given_to_a_3d_model_is_refused_and_a_volume_is_scored(trained,
                                                                         models) -> None:
    from bench.webapp import predict_upload

    png = trained["png"]
    with pytest.raises(UserError, match=f"^{png.name}: a 3D model reads volumes"):
        predict_upload(models["organ"], png.name, png.read_bytes())
    at = _predict_page(trained["organ"])
    npy = trained["npy"]
    at.file_uploader[0].set_value((npy.name, npy.read_bytes(), "application/octet-stream")).run()
    assert not at.error and not at.exception
    expected = json.loads(_cli("predict", npy, "--run", trained["organ"], "--format",
                               "json"))["predictions"][0]
    assert list(at.table[0].value["probability"]) == [f"{p:.4f}"
                                                      for p in expected["probabilities"]]


def test_an_empty_run_directory_is_explained_on_the_page(trained, tmp_path) -> None:
    empty = tmp_path / "empty-run"
    empty.mkdir()
    at = _app(empty)
    assert [e.value for e in at.error] == [serve.run_dir_problem(empty)]
    assert "is empty" in at.error[0].value and not at.dataframe
    at = _app(empty, trained["breast"])  # the good one is still shown
    assert len(at.error) == 1 and len(at.dataframe) == 1


# --- the real app in headless Chromium on a real BreastMNIST run --------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1500,1300"]


def _browser_or_skip(profile_root: Path):
    """A headless Chromium driven by Selenium (a fresh profile under profile_root), or a skip
    naming what is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no browser: Debian's chromium and chromium-driver are not installed "
                    "(`apt-get install chromium chromium-driver`; .ci/run does it)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(it comes with the dev extra)")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download
    for attempt in range(3):  # a busy machine sometimes misses chromedriver's start-up wait
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile_root / f'chromium-{attempt}'}"]:
            options.add_argument(flag)
        try:
            return webdriver.Chrome(service=Service(driver), options=options)
        except WebDriverException:
            if attempt == 2:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _medbench(*args: object, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, check=True, **kw)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory, real_data_dir: Path) -> Path:
    """A small real BreastMNIST run: the validation-chosen recipe, 2 seeds x 2 epochs."""
    if os.environ.get("MEDBENCH_WEB_RUN"):
        return Path(os.environ["MEDBENCH_WEB_RUN"])
    out = tmp_path_factory.mktemp("web") / "breast-run"
    _medbench("train", "--config", REPO / "search_spaces/configs/breast_cnn.yaml",
              "--seeds", "100,101", "--set", "epochs=2", "--set", "threads=1",
              "--data-dir", real_data_dir, "--out", out)
    return out


@pytest.fixture()
def server(real_run: Path, tmp_path: Path):
    """`medbench serve` on a free loopback port, stopped (its whole process group) afterwards."""
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "serve", str(real_run),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 420  # a loaded 2-core box has needed minutes
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            raise AssertionError(f"medbench serve did not start: "
                                 f"{(tmp_path / 'serve.log').read_text()[-2000:]}")
        time.sleep(1)
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _websocket_handshake(url: str, host: str) -> int:
    """The HTTP status of a websocket upgrade to the page with this Host header."""
    import base64

    port = int(url.rsplit(":", 1)[1])
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall((f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        status = s.recv(4096).split(b"\r\n", 1)[0]
    return int(status.split()[1])


@pytest.mark.slow
def test_real_server_refuses_a_foreign_host_header(server) -> None:
    """DNS rebinding: a page at attacker.example re-pointed to 127.0.0.1 opens the websocket
    with its own Host header; only the loopback names get through."""
    port = server.rsplit(":", 1)[1]
    assert _websocket_handshake(server, f"127.0.0.1:{port}") == 101
    assert _websocket_handshake(server, f"localhost:{port}") == 101
    assert _websocket_handshake(server, f"attacker.example:{port}") != 101


@pytest.mark.slow
def test_real_app_in_headless_chromium(real_run, server, real_data_dir, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bench.leaderboard import build_leaderboard

    png = tmp_path / "breastmnist_test_0.png"
    Image.fromarray(np.load(real_data_dir / "breastmnist.npz")["test_images"][0]).save(png)
    expected = json.loads(_medbench("predict", png, "--run", real_run, "--dataset",
                                    "breastmnist", "--format", "json").stdout)["predictions"][0]
    board = build_leaderboard(real_run)  # as the page builds it (the bootstrap is seeded)
    shots = os.environ.get("MEDBENCH_WEB_SCREENSHOTS")
    browser = _browser_or_skip(tmp_path)
    try:
        wait = WebDriverWait(browser, 240)
        browser.get(server)

        def cells(d) -> list[str]:
            return [c.get_attribute("textContent") for c in
                    d.find_elements(By.CSS_SELECTOR, "[data-testid='stDataFrame'] td")]

        wait.until(lambda d: "cnn_small" in cells(d))
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "breastmnist (binary-class)" in body
        # the grid's accessible table: entry, picked, size, seeds, failed, AUC, ...
        header = [h.get_attribute("textContent") for h in browser.find_elements(
            By.CSS_SELECTOR, "[data-testid='stDataFrame'] th")]
        rows = pd.DataFrame(np.array(cells(browser)).reshape(-1, len(header)), columns=header)
        for _, r in board.iterrows():
            shown = rows[rows["entry"] == r["family"]].iloc[0]
            assert float(shown["AUC"]) == pytest.approx(r["test_auc_mean"], abs=1e-9)
            assert float(shown["ACC"]) == pytest.approx(r["test_acc_mean"], abs=1e-9)
            assert shown["AUC vs ref"] == r["verdict_auc_vs_resnet18"]
        if shots:
            time.sleep(3)  # let the figures finish loading
            _full_page_screenshot(browser, Path(shots) / "web-leaderboard.png")

        radio = [el for el in browser.find_elements(By.CSS_SELECTOR,
                                                    "[data-testid='stSidebar'] label")
                 if el.text.strip() == "Predict"]
        radio[0].click()
        upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"))
        upload[0].send_keys(str(png))
        wait.until(lambda d: "Predicted class" in d.find_element(By.TAG_NAME, "body").text)
        success = browser.find_element(By.CSS_SELECTOR, "[data-testid='stAlertContentSuccess']")
        assert success.text.startswith(f"Predicted class {expected['class']}: "
                                       f"{expected['label']} ")
        table = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR,
                                                     "[data-testid='stTable'] table"))[0]
        read = [[c.text for c in tr.find_elements(By.CSS_SELECTOR, "td")]
                for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert [int(r[0]) for r in read] == list(range(len(expected["probabilities"])))
        assert [r[2] for r in read] == [f"{p:.4f}" for p in expected["probabilities"]]
        assert [r[3] for r in read].index("yes") == expected["class"]
        if shots:
            time.sleep(3)
            _full_page_screenshot(browser, Path(shots) / "web-predict.png")
    finally:
        browser.quit()


def _full_page_screenshot(browser, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main section, so size the window to it."""
    from selenium.webdriver.common.by import By

    main = browser.find_element(By.CSS_SELECTOR, "[data-testid='stMain']")
    height = browser.execute_script("return arguments[0].scrollHeight", main)
    browser.set_window_size(1500, min(max(int(height) + 40, 900), 4000))
    time.sleep(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(path))
    browser.set_window_size(1500, 1300)
