"""Notebooks read as documentation and stay clean in git.

* Committed notebooks have no outputs, no execution counts, no widget state, and exactly
  the form ``make clean-notebooks`` (``mbo_lab.launch.clean_notebook``) gives them.
* nbval markers are cell tags (``nbval-ignore-output``, ...), not ``# NBVAL_...`` lines in
  the code the reader sees; nbval 0.11 derives the same options from both.
* Running a notebook does not change its metadata: the committed metadata is what nbclient
  (and JupyterLab) write in this environment, and the optional git filter
  (``make notebook-filter``) leaves no ``git diff`` after a run.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mbo_lab.launch import (
    NBVAL_TAGS,
    canonical_metadata,
    clean_notebook,
    clean_text,
    dumps_notebook,
)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(
    p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
)
MARKER_LINE = re.compile(r"^\s*#+\s*(NBVAL_[A-Z_]+|PYTEST_VALIDATE_IGNORE_OUTPUT)\s*$", re.M)


def _src(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def _nbval_options(cell: dict) -> dict:
    """The options nbval 0.11 derives for a code cell (its own functions, same merge)."""
    from nbval.plugin import find_comment_markers, find_metadata_tags

    options = dict(find_metadata_tags(cell.get("metadata", {})))
    options.update(dict(find_comment_markers(_src(cell))))
    return options


def _cell(source: str, tags: list[str] | None = None, **meta) -> dict:
    md = dict(meta)
    if tags is not None:
        md["tags"] = tags
    return {"cell_type": "code", "id": f"c{abs(hash(source)) % 10**8}", "metadata": md,
            "execution_count": 3, "outputs": [{"output_type": "stream", "name": "stdout",
                                               "text": "x\n"}], "source": source}


def _notebook(cells: list[dict]) -> dict:
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3"}},
            "nbformat": 4, "nbformat_minor": 4}


# --- committed notebooks ------------------------------------------------------------------


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_or_widget_state(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name} cell {i} has outputs"
            assert cell["execution_count"] is None, f"{path.name} cell {i} was executed"
        assert set(cell.get("metadata", {})) <= {"tags", "raw_mimetype", "format"}, (
            f"{path.name} cell {i} metadata {cell.get('metadata')}: run `make clean-notebooks`"
        )
    assert "widgets" not in nb["metadata"], f"{path.name} holds widget state"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbval_markers_are_tags_not_code_lines(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        m = MARKER_LINE.search(_src(cell))
        assert m is None, (
            f"{path.name} cell {i} shows '{m.group(0).strip()}' to the reader; use the cell "
            "tag instead (`make clean-notebooks` converts it)"
        )
        tags = cell.get("metadata", {}).get("tags", [])
        nbval_tags = [t for t in tags if t.startswith("nbval") or t == "raises-exception"]
        assert set(nbval_tags) <= set(NBVAL_TAGS.values()), (path.name, i, tags)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_metadata_is_what_a_run_writes(path):
    meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    want = canonical_metadata()
    assert set(meta) == {"kernelspec", "language_info"}, sorted(meta)
    assert meta["kernelspec"] == want["kernelspec"]
    got_li, want_li = dict(meta["language_info"]), dict(want["language_info"])
    # The patch version is the Python the lead cleaned with; the minor is the project's.
    major_minor = ".".join(want_li["version"].split(".")[:2])
    assert got_li.pop("version", "").startswith(major_minor + "."), meta["language_info"]
    want_li.pop("version")
    assert got_li == want_li


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_form_is_the_clean_form(path):
    """Byte for byte what `make clean-notebooks` writes (so it never makes a diff)."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    clean = json.loads(clean_text(text))
    # Keep the committed Python patch version (checked above), so this holds on any 3.11.
    committed_version = nb.get("metadata", {}).get("language_info", {}).get("version")
    if committed_version:
        clean["metadata"]["language_info"]["version"] = committed_version
    assert text == dumps_notebook(clean), (
        f"{path.relative_to(ROOT)} is not clean: run `make clean-notebooks`"
    )


# --- the cleaner ----------------------------------------------------------------------------


def test_clean_converts_every_nbval_marker_to_the_equivalent_tag():
    cells = [
        _cell("# NBVAL_IGNORE_OUTPUT\nx = 1\nx"),
        _cell("# NBVAL_CHECK_OUTPUT\n\nprint(2)"),
        _cell("#NBVAL_SKIP\nimport time"),
        _cell("# NBVAL_RAISES_EXCEPTION\nraise ValueError('shown')"),
        _cell("y = 2  # a comment that stays\n# NBVAL_IGNORE_OUTPUT\ny", tags=["keep-me"]),
        _cell("z = 3", tags=["nbval-skip"]),
        _cell("print('# NBVAL_SKIP is text here')"),
    ]
    before = [_nbval_options(c) for c in cells]
    nb = clean_notebook(_notebook(copy.deepcopy(cells)))
    after = [_nbval_options(c) for c in nb["cells"]]
    assert after == before, "nbval must see the same options after cleaning"
    assert [c["metadata"].get("tags") for c in nb["cells"]] == [
        ["nbval-ignore-output"], ["nbval-check-output"], ["nbval-skip"],
        ["raises-exception"], ["keep-me", "nbval-ignore-output"], ["nbval-skip"], None,
    ]
    assert [c["source"] for c in nb["cells"]] == [
        "x = 1\nx", "print(2)", "import time", "raise ValueError('shown')",
        "y = 2  # a comment that stays\ny", "z = 3", "print('# NBVAL_SKIP is text here')",
    ]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in nb["cells"])


def test_clean_keeps_the_real_notebooks_nbval_options_and_code():
    """What the lead's `make clean-notebooks` will do to today's notebooks changes neither
    what nbval checks nor the code (apart from the marker lines)."""
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        clean = clean_notebook(copy.deepcopy(nb))
        assert len(clean["cells"]) == len(nb["cells"])
        for old, new in zip(nb["cells"], clean["cells"], strict=True):
            assert old["cell_type"] == new["cell_type"]
            if old["cell_type"] != "code":
                assert _src(old) == new["source"]
                continue
            assert _nbval_options(old) == _nbval_options(new), (path.name, _src(old)[:80])
            code = [ln for ln in _src(old).splitlines() if not MARKER_LINE.match(ln)]
            assert [ln for ln in new["source"].splitlines() if ln.strip()] == [
                ln for ln in code if ln.strip()
            ], path.name


def test_clean_is_idempotent_and_matches_nbformat():
    import nbformat

    for path in NOTEBOOKS:
        once = clean_text(path.read_text(encoding="utf-8"))
        assert clean_text(once) == once, path.name
        nb = nbformat.reads(once, as_version=4)
        nbformat.validate(nb)
        assert nbformat.writes(nb) + "\n" == once, "Jupyter would save it differently"


def test_clean_strips_run_state():
    nb = _notebook([_cell("1 + 1", collapsed=True, scrolled=True,
                          execution={"iopub.status.idle": "2026-01-01T00:00:00Z"}),
                    {"cell_type": "markdown", "metadata": {"tags": ["intro"]}, "source": "# t"}])
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.0"}
    clean = clean_notebook(nb)
    assert clean["metadata"] == canonical_metadata()
    assert clean["cells"][0]["metadata"] == {} and clean["cells"][0]["outputs"] == []
    assert clean["cells"][1]["metadata"] == {"tags": ["intro"]}
    assert clean["nbformat_minor"] >= 5 and all(c.get("id") for c in clean["cells"])


# --- a run does not change the metadata -----------------------------------------------------


def _run_with_nbclient(path: Path) -> None:
    """Execute a notebook in place as `jupyter nbconvert --execute --inplace` does."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={
        "metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)


SMALL = [
    _cell("import ipywidgets as w\nw.IntSlider(value=3)", tags=["nbval-ignore-output"]),
    _cell("print(sum(range(10)))"),
]


@pytest.fixture
def small_notebook(tmp_path) -> Path:
    path = tmp_path / "small.ipynb"
    path.write_text(dumps_notebook(clean_notebook(_notebook(copy.deepcopy(SMALL)))))
    return path


@pytest.mark.timeout(300)
def test_running_a_clean_notebook_keeps_its_metadata(small_notebook):
    before = json.loads(small_notebook.read_text())
    _run_with_nbclient(small_notebook)
    after = json.loads(small_notebook.read_text())
    assert "".join(after["cells"][1]["outputs"][0]["text"]) == "45\n", "the notebook ran"
    widget_state = after["metadata"].pop("widgets", None)
    assert widget_state, "nbclient stores widget state (stripped by the cleaner)"
    assert after["metadata"] == before["metadata"], (
        "kernelspec/language_info after a run differ from the committed ones"
    )
    # And cleaning the run notebook gives back the committed file, byte for byte.
    assert clean_text(small_notebook.read_text()) == dumps_notebook(before)


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None,
                    reason="needs git and make")
def test_git_filter_shows_no_diff_after_a_run(small_notebook, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_CONFIG_GLOBAL": str(tmp_path / "gitconfig"),
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=120)

    assert git("init", "-q").returncode == 0
    venv_python = Path(sys.executable)
    res = subprocess.run(["make", "--no-print-directory", "notebook-filter", f"NB_REPO={repo}",
                          f"VENV={venv_python.parent.parent}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "filter=mbo-notebook" in (repo / ".git/info/attributes").read_text()
    nb = repo / "small.ipynb"
    shutil.copy(small_notebook, nb)
    assert git("add", "small.ipynb").returncode == 0
    assert git("commit", "-q", "-m", "clean").returncode == 0
    _run_with_nbclient(nb)
    assert json.loads(nb.read_text())["cells"][1]["outputs"], "ran, with outputs on disk"
    diff = git("diff", "--exit-code", "--stat")
    assert diff.returncode == 0, f"a run shows in git diff: {diff.stdout}{diff.stderr}"
