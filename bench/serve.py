"""`medbench serve`: start the web page (bench/webapp.py) with Streamlit, safely by default.

Why Streamlit: the study this project grew from used it; it adds fewer packages than Gradio and
changes none of ours (Gradio would downgrade Pillow), imports several times faster, and ships
`streamlit.testing.v1.AppTest`, which runs the page's script in-process, so the predictor and
its error messages are tested without a browser. Measurements: reports/archive/web-serve.md.

Why these defaults: the app has no authentication and runs models on uploaded files, so it
listens on loopback unless told otherwise (and then warns); Streamlit's usage statistics are
off (no phoning home from a clinic's machine), and so is its file watcher (nothing to reload in
a served app, and it costs CPU). More of the same:

* `server.allowedHosts`: the websocket accepts only a Host header naming this machine's
  loopback names (plus the `--host` address and, on a wildcard address, this machine's names;
  plus any `--allow-host`). A page on another site whose DNS name is re-pointed at 127.0.0.1
  (DNS rebinding) reaches the port from the user's own browser, but with its own Host header,
  so it is refused.
* No outside look-ups: Streamlit asks an outside service for the machine's public IP when it
  listens on a wildcard address; the launcher (`python -m bench.serve`, `main` below) turns
  that function off before Streamlit starts.
* `server.maxUploadSize` is sized to the largest input the served models take
  (`upload_limit_mb`), not Streamlit's 200 MB; the page decodes with `bench.decode.PAGE_LIMITS`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import math
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from bench.errors import UserError

WEB_EXTRA = "pip install 'medmnist-bench[web]'"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
APP = Path(__file__).with_name("webapp.py")


def require_streamlit() -> None:
    """One clear error naming the extra when Streamlit is not installed."""
    if importlib.util.find_spec("streamlit") is None:
        raise UserError(f"medbench serve needs the web extra (Streamlit), which is not "
                        f"installed; install it with: {WEB_EXTRA}")


def run_dir_problem(path: Path | str) -> str | None:
    """Why a directory cannot be shown (missing, empty or unfinished, nothing finished), or None.

    The CLI refuses such a directory before starting the server; the page shows the same
    message if a directory changes while it is being served.
    """
    from bench.rundir import RunDir

    return RunDir(path).problem()


def check_run_dirs(run_dirs: Iterable[Path | str]) -> list[Path]:
    """The run directories as paths, or a UserError for the first one that cannot be shown."""
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise UserError("medbench serve needs at least one run directory, e.g. runs/<name>")
    for p in paths:
        problem = run_dir_problem(p)
        if problem:
            raise UserError(problem)
    return paths


MIN_UPLOAD_MB = 8  # room for an ordinary 16-bit X-ray PNG whatever the model's size


def upload_limit_mb(run_dirs: Iterable[Path | str]) -> int:
    """The upload limit (MB) for these runs: 16 times the largest input their finished models
    take, as float32 (a 64^3 volume: 16 MB), and at least MIN_UPLOAD_MB."""
    from bench.data import dataset_info
    from bench.rundir import RunDir

    largest = 0
    for run in map(RunDir, run_dirs):
        if not run.has_final():
            continue
        df = run.final(columns=["dataset", "size", "status"])
        for flag, size in df[df.status == "ok"][["dataset", "size"]].drop_duplicates()\
                .itertuples(index=False, name=None):
            info = dataset_info(str(flag))
            channels = 1 if info.dims == 3 else info.n_channels
            largest = max(largest, int(size) ** info.dims * channels * 4)
    return max(MIN_UPLOAD_MB, math.ceil(16 * largest / 2**20))


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> list[str]:
    """Host names the websocket accepts: loopback names; the `--host` address; on a wildcard
    address (0.0.0.0, ::) this machine's host name and its addresses; and `extra`."""
    names = list(LOOPBACK_NAMES)
    if host not in ("0.0.0.0", "::"):
        names.append(host)
    else:
        names.append(socket.gethostname())
        with contextlib.suppress(OSError):  # its addresses, as the system resolves its name
            names += [a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)]
    names += [h.strip() for h in extra if h.strip()]
    return list(dict.fromkeys(n.lower() for n in names if n))


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str | None:
    """The warning printed when the app listens beyond loopback."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}:{port}: the page has NO authentication; anyone who "
            "can reach this port can see the runs and run the models on their files. Use the "
            f"default --host {DEFAULT_HOST} (with an SSH tunnel for remote access) unless this "
            "network is trusted.")


def streamlit_command(run_dirs: list[Path], host: str = DEFAULT_HOST,
                      port: int = DEFAULT_PORT, allow_hosts: Iterable[str] = ()) -> list[str]:
    """The command line that runs the app on these run directories through `main` below
    (Streamlit's own CLI, with its outside look-up turned off)."""
    return [sys.executable, "-m", "bench.serve", "run", str(APP),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--server.fileWatcherType", "none",
            "--server.runOnSave", "false", "--browser.gatherUsageStats", "false",
            "--global.developmentMode", "false", "--client.toolbarMode", "minimal",
            "--client.showErrorDetails", "type",
            "--server.maxUploadSize", str(upload_limit_mb(run_dirs)),
            *[a for h in allowed_hosts(host, allow_hosts)
              for a in ("--server.allowedHosts", h)],
            "--theme.base", "light",
            "--", *[str(p.resolve()) for p in run_dirs]]


def no_outside_lookups() -> None:
    """Streamlit asks checkip.amazonaws.com for this machine's public IP (for its start-up
    banner and its origin allow-list) when it listens on a wildcard address; a clinic's
    machine must not. Its function is replaced by one that knows no public IP."""
    from streamlit import net_util

    net_util.get_external_ip = lambda: None


def main(argv: list[str]) -> int:
    """`python -m bench.serve run APP ...`: Streamlit's CLI after `no_outside_lookups`."""
    no_outside_lookups()
    from streamlit.web import cli as streamlit_cli

    sys.argv = ["streamlit", *argv]
    try:
        streamlit_cli.main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _echo(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def serve(run_dirs: Iterable[Path | str], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          echo: Callable[..., None] = _echo, allow_hosts: Iterable[str] = ()) -> int:
    """Check everything that can be checked, then run Streamlit in the foreground until
    interrupted. Returns Streamlit's exit code."""
    require_streamlit()
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: choose a port between 1 and 65535")
    paths = check_run_dirs(run_dirs)
    warning = exposure_warning(host, port)
    if warning:
        echo(warning, err=True)
    shown = f"[{host}]" if ":" in host else host
    echo(f"serving {len(paths)} run director{'y' if len(paths) == 1 else 'ies'} at "
         f"http://{shown}:{port}  (Ctrl+C stops)")
    proc = subprocess.Popen(streamlit_command(paths, host, port, allow_hosts))
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Streamlit got the same SIGINT (one process group) and stops
        return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
