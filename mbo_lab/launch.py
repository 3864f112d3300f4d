"""Start JupyterLab from this environment with the dashboard notebook open.

``mbo-lab lab [FILE]`` and ``make demo`` call :func:`main`. It runs ``python -m jupyterlab``
with the interpreter running mbo_lab (so the server, its kernels and mbo_lab share one
environment), on 127.0.0.1 with a fresh token, and prints the URL (token included) once the
server answers. The kernels inherit ``MBO_LAB_DATA_PATH``, which the dashboard notebook
reads (without FILE: the CME sample beside the checkout when present, else demo data).

Headless-safe: the browser is opened only when there is a display (or on macOS/Windows)
and a graphical browser; JupyterLab itself never opens one (a console browser such as
``lynx`` would otherwise take over the terminal). Ctrl-C or SIGTERM stops the server,
which shuts its kernels down, and :func:`main` returns 0.

Also here: :func:`clean_notebook`, the canonical committed form of a notebook (no outputs,
no widget state, nbval markers as cell tags, the metadata a run writes), used by
``make clean-notebooks`` (``python -m mbo_lab.launch --clean-notebooks FILES``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, MboLabError

__all__ = [
    "main",
    "dashboard_notebook",
    "lab_command",
    "can_open_browser",
    "clean_notebook",
    "canonical_metadata",
    "NBVAL_TAGS",
]

log = logging.getLogger(__name__)

#: The project checkout (holds ``notebooks/`` for an editable install).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The notebook ``make demo`` / ``mbo-lab lab`` opens, relative to the project root.
DASHBOARD = Path("notebooks") / "02_dashboard.ipynb"
#: Seconds to wait for JupyterLab to answer before giving up.
START_TIMEOUT_S = 180.0
#: Seconds JupyterLab gets to shut its kernels down after SIGTERM before it is killed.
STOP_TIMEOUT_S = 20.0
#: Ports tried first when none is given (JupyterLab's usual 8888 and neighbours).
DEFAULT_PORTS = range(8888, 8898)

#: JupyterLab's "get notified about official Jupyter news?" prompt, disabled for the demo.
ANNOUNCEMENTS_PLUGIN = "@jupyterlab/apputils-extension:announcements"

_CONSOLE_BROWSERS = {"lynx", "links", "elinks", "w3m", "www-browser"}

_FALLBACK_NOTEBOOK = {
    "cells": [
        {"cell_type": "markdown", "id": "intro", "metadata": {},
         "source": "# Replay dashboard\n\nThe file given to `mbo-lab lab` "
                   "(`MBO_LAB_DATA_PATH`), else the synthetic demo data."},
        {"cell_type": "code", "id": "dashboard", "metadata": {}, "execution_count": None,
         "outputs": [],
         "source": "from pathlib import Path\n\nimport mbo_lab\n\n"
                   "path = Path(mbo_lab.get_settings().data_path)\n"
                   "session = mbo_lab.open(path if path.is_file() else None)\n"
                   "session.dashboard(levels=10)"},
    ],
    "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
}


# --- where things are ------------------------------------------------------------------


def dashboard_notebook() -> tuple[Path, Path]:
    """(root folder served by JupyterLab, dashboard notebook inside it).

    The checkout's ``notebooks/02_dashboard.ipynb`` for a source/editable install; else a
    small dashboard notebook written once into ``<cache_dir>/notebooks/``.
    """
    nb = PROJECT_ROOT / DASHBOARD
    if nb.is_file():
        return PROJECT_ROOT, nb
    from .config import get_settings

    root = Path(get_settings().cache_dir) / "notebooks"
    nb = root / "dashboard.ipynb"
    if not nb.is_file():
        root.mkdir(parents=True, exist_ok=True)
        nb.write_text(dumps_notebook(canonicalised(_FALLBACK_NOTEBOOK)), encoding="utf-8")
    return root, nb


def canonicalised(nb: dict) -> dict:
    """:func:`clean_notebook` applied to a plain dict notebook (a copy)."""
    return clean_notebook(copy.deepcopy(nb))


def _free_port(host: str, candidates: Iterable[int]) -> int:
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def can_open_browser(env: dict[str, str] | None = None) -> bool:
    """True when a graphical browser can be opened here (never in CI or without a display).

    On Linux and the BSDs a ``DISPLAY`` or ``WAYLAND_DISPLAY`` is required, and console
    browsers (lynx, w3m, ...) do not count.
    """
    env = os.environ if env is None else env
    if env.get("CI") or env.get("MBO_LAB_NO_BROWSER"):
        return False
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
            return False
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    name = getattr(browser, "name", "") or ""
    return Path(str(name)).name not in _CONSOLE_BROWSERS


def lab_command(root: Path, notebook: Path, port: int, workspaces: Path) -> list[str]:
    """The ``python -m jupyterlab`` command line :func:`main` runs (token via environment)."""
    rel = notebook.relative_to(root).as_posix()
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        f"--ServerApp.default_url=/lab/tree/{rel}",
        # A workspace of its own, so the dashboard opens alone, not in a restored layout.
        f"--LabApp.workspaces_dir={workspaces}",
        # No network calls at start-up (works offline, starts faster).
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers
    return cmd


def _answers(url: str, token: str, timeout: float = 2.0) -> bool:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _data_path(path: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """(data file to pass as MBO_LAB_DATA_PATH or None, a line saying what is shown)."""
    from .config import get_settings

    if path is None:
        default = Path(get_settings().data_path)
        if default.is_file():
            return None, f"data: {default}"
        return None, f"data: synthetic demo data ({default} not found)"
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise DataError(f"no such file: {path}; give a Databento MBO .dbn or .dbn.zst file")
    return p, f"data: {p}"


# --- main --------------------------------------------------------------------------------


def main(path: str | os.PathLike[str] | None = None, *, port: int | None = None,
         open_browser: bool = True) -> int:
    """Run JupyterLab with the dashboard notebook open on ``path`` until Ctrl-C.

    ``path``: a DBN file (passed to the kernels as ``MBO_LAB_DATA_PATH``) or a notebook
    (``.ipynb``, opened instead of the dashboard); None: the dashboard on the default data.
    ``port``: None tries 8888-8897, then any free port. Prints the URL with its token.
    Returns 0 after a clean stop, JupyterLab's exit status if it failed.
    """
    root, notebook = dashboard_notebook()
    data, data_line = None, None
    if path is not None and str(path).endswith(".ipynb"):
        nb = Path(path).expanduser().resolve()
        if not nb.is_file():
            raise DataError(f"no such notebook: {path}")
        notebook = nb
        if not nb.is_relative_to(root):
            root = nb.parent
    else:
        data, data_line = _data_path(path)
    if port is not None and not 0 <= int(port) <= 65535:
        raise ConfigError(f"port must be within 0..65535, got {port}")
    host = "127.0.0.1"
    port = _free_port(host, DEFAULT_PORTS if port is None else [int(port)])
    token = secrets.token_hex(24)

    env = dict(os.environ)
    env["JUPYTER_TOKEN"] = token
    env.pop("JUPYTER_PORT", None)
    if data is not None:
        env["MBO_LAB_DATA_PATH"] = str(data)
    env.setdefault("JUPYTER_WIDGETS_ECHO", "0")  # as on Binder: less widget traffic
    # Tools the notebooks shell out to (`!pip`, `!mbo-lab`) come from this environment.
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")

    rel = urllib.parse.quote(notebook.relative_to(root).as_posix())
    base = f"http://{host}:{port}"
    url = f"{base}/lab/tree/{rel}?token={token}"

    with tempfile.TemporaryDirectory(prefix="mbo-lab-lab-") as tmp:
        workspaces = Path(tmp) / "workspaces"
        workspaces.mkdir()
        # No "Jupyter news?" prompt over the dashboard: an extra config path (the user's
        # own config still wins) whose page config disables the announcements plugin.
        labconfig = Path(tmp) / "config" / "labconfig"
        labconfig.mkdir(parents=True)
        (labconfig / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {ANNOUNCEMENTS_PLUGIN: True}}))
        env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
            p for p in (str(Path(tmp) / "config"), os.environ.get("JUPYTER_CONFIG_PATH")) if p)
        logfile = Path(tmp) / "jupyterlab.log"
        cmd = lab_command(root, notebook, port, workspaces)
        log.info("starting %s", " ".join(cmd))
        with open(logfile, "wb") as out:
            # Own session: the terminal's Ctrl-C reaches only us; we stop the server.
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        # Compile (or load) the Numba kernels while JupyterLab starts and the page opens,
        # so the notebook's first cell does not wait for a cold compile.
        warm = subprocess.Popen([sys.executable, "-c", "import mbo_lab; mbo_lab.warmup()"],
                                cwd=root, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        stop = threading.Event()

        def _on_signal(signum: int, frame: Any) -> None:
            stop.set()

        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                old[sig] = signal.signal(sig, _on_signal)
        try:
            t0 = time.monotonic()
            while not _answers(f"{base}/api/status", token):
                if proc.poll() is not None or stop.is_set():
                    break
                if time.monotonic() - t0 > START_TIMEOUT_S:
                    sys.stderr.write(f"mbo-lab lab: JupyterLab did not answer within "
                                     f"{START_TIMEOUT_S:.0f} s\n")
                    break
                stop.wait(0.2)
            else:
                lines = [f"JupyterLab is ready in {time.monotonic() - t0:.1f} s "
                         f"({Path(sys.executable).parent.parent}):", f"    {url}"]
                if data_line:
                    lines.append(data_line)
                lines.append("Run the notebook (Run > Run All Cells) to start the dashboard; "
                             "Ctrl-C here stops JupyterLab and its kernels.")
                print("\n".join(lines), flush=True)
                if open_browser and can_open_browser():
                    threading.Thread(target=webbrowser.open_new_tab, args=(url,),
                                     daemon=True).start()
                while proc.poll() is None and not stop.is_set():
                    stop.wait(0.5)
                if proc.poll() is None:  # a clean stop asked for
                    return _stop(proc)
            # Failed to start (or stopped while starting).
            rc = proc.poll()
            if rc is None:
                _stop(proc)
                return 0 if stop.is_set() else 1
            tail = logfile.read_text(errors="replace").splitlines()[-30:]
            sys.stderr.write("mbo-lab lab: JupyterLab exited with status "
                             f"{rc}:\n" + "\n".join(tail) + "\n")
            return rc or 1
        finally:
            if proc.poll() is None:
                _stop(proc)
            if warm.poll() is None:
                warm.terminate()
                warm.wait()
            for sig, handler in old.items():
                signal.signal(sig, handler)


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM the server (it shuts down its kernels), then kill its group if it hangs."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return 1
    return 0


# --- committed notebooks -----------------------------------------------------------------

#: nbval's first-line comment markers and the cell tags nbval 0.11 reads instead.
NBVAL_TAGS = {
    "NBVAL_IGNORE_OUTPUT": "nbval-ignore-output",
    "NBVAL_CHECK_OUTPUT": "nbval-check-output",
    "NBVAL_SKIP": "nbval-skip",
    "NBVAL_RAISES_EXCEPTION": "raises-exception",  # nbval's alias; nbclient honours it too
}

#: Cell metadata kept in committed notebooks: tags (read by nbval and nbclient) and the
#: format of raw cells. Everything else (execution timings, collapsed/scrolled state) is
#: written by runs and front ends.
KEPT_CELL_METADATA = ("tags", "raw_mimetype", "format")

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python",
              "name": "python3"}


def canonical_metadata() -> dict[str, Any]:
    """Notebook metadata as a run in this environment writes it (kernelspec, language_info).

    ``language_info`` is what ipykernel reports (nbclient and JupyterLab store it when a
    notebook runs), so executing a clean notebook here leaves its metadata unchanged.
    """
    try:
        from ipykernel.ipkernel import IPythonKernel

        info = copy.deepcopy(dict(IPythonKernel.language_info))
    except ImportError:  # pragma: no cover - ipykernel comes with jupyterlab
        v = sys.version_info
        info = {"codemirror_mode": {"name": "ipython", "version": v[0]},
                "file_extension": ".py", "mimetype": "text/x-python", "name": "python",
                "nbconvert_exporter": "python", "pygments_lexer": f"ipython{v[0]}",
                "version": sys.version.split()[0]}
    return {"kernelspec": dict(KERNELSPEC), "language_info": info}


def _split_markers(source: str) -> tuple[str, list[str]]:
    """Remove ``# NBVAL_...`` comment lines from a cell; return (source, tags)."""
    kept, tags = [], []
    for line in source.splitlines(keepends=True):
        s = line.strip()
        if s.startswith("#") and s.lstrip("#").strip() in NBVAL_TAGS:
            tags.append(NBVAL_TAGS[s.lstrip("#").strip()])
            continue
        kept.append(line)
    if tags:
        while kept and not kept[0].strip():  # the marker's blank line after it
            kept.pop(0)
    return "".join(kept), tags


def clean_notebook(nb: Any) -> Any:
    """Make ``nb`` (an nbformat v4 dict/NotebookNode, changed in place) committable.

    Outputs, execution counts, widget state and all other run metadata are dropped;
    ``# NBVAL_*`` comment lines become the equivalent cell tags (nbval 0.11 reads both);
    cell ids are kept (made up where missing); notebook metadata becomes
    :func:`canonical_metadata`. Idempotent.
    """
    nb["nbformat"], nb["nbformat_minor"] = 4, max(5, int(nb.get("nbformat_minor", 5)))
    used: set[str] = set()
    for i, cell in enumerate(nb["cells"]):
        src = cell.get("source", "")
        if isinstance(src, list):
            src = "".join(src)
        meta = cell.get("metadata", {}) or {}
        tags = list(meta.get("tags", []) or [])
        if cell.get("cell_type") == "code":
            src, marker_tags = _split_markers(src)
            tags += [t for t in marker_tags if t not in tags]
            cell["outputs"] = []
            cell["execution_count"] = None
        cell["source"] = src
        new_meta = {k: meta[k] for k in KEPT_CELL_METADATA if k in meta}
        if tags:
            new_meta["tags"] = tags
        else:
            new_meta.pop("tags", None)
        cell["metadata"] = new_meta
        cid = cell.get("id") or f"cell-{i:02d}"
        while cid in used:
            cid = f"{cid}-{i}"
        used.add(cid)
        cell["id"] = cid
    nb["metadata"] = canonical_metadata()
    return nb


def dumps_notebook(nb: Any) -> str:
    """A clean notebook as Jupyter saves it (``nbformat.writes`` + newline: sources as
    lists of lines, indent 1, sorted keys), without importing nbformat (slow to import)."""
    out = copy.deepcopy(nb)
    for cell in out["cells"]:
        src = cell.get("source", "")
        if isinstance(src, str):
            cell["source"] = src.splitlines(keepends=True)
    return json.dumps(out, sort_keys=True, indent=1, separators=(",", ": "),
                      ensure_ascii=False) + "\n"


def clean_text(text: str) -> str:
    """Clean notebook JSON text (what the git filter and ``make clean-notebooks`` run)."""
    return dumps_notebook(clean_notebook(json.loads(text)))


def clean_files(paths: Iterable[str | os.PathLike[str]], check: bool = False) -> list[Path]:
    """Clean notebooks in place; return those that changed (with ``check``: only report).

    The path ``-`` reads a notebook from stdin and writes the clean one to stdout (a git
    clean filter: ``make notebook-filter``).
    """
    changed = []
    for p in map(Path, paths):
        if str(p) == "-":
            sys.stdout.write(clean_text(sys.stdin.read()))
            continue
        text = p.read_text(encoding="utf-8")
        new = clean_text(text)
        if new != text:
            changed.append(p)
            if not check:
                p.write_text(new, encoding="utf-8")
    return changed


def _cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mbo_lab.launch", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("file", nargs="*", help="data file (.dbn/.dbn.zst) or notebook to open; "
                    "with --clean-notebooks: the notebooks to clean")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--clean-notebooks", action="store_true",
                    help="strip outputs/metadata of the given notebooks in place")
    ap.add_argument("--check", action="store_true",
                    help="with --clean-notebooks: only list notebooks that are not clean")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.clean_notebooks:
            changed = clean_files(args.file, check=args.check)
            for p in changed:
                print(f"{'not clean' if args.check else 'cleaned'}: {p}")
            return 1 if (args.check and changed) else 0
        if len(args.file) > 1:
            ap.error("give at most one file")
        return main(args.file[0] if args.file else None, port=args.port,
                    open_browser=not args.no_browser)
    except MboLabError as exc:
        sys.stderr.write(f"mbo-lab lab: error: {exc}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_cli())
