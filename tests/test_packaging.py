"""Packaging and environment files agree with pyproject.toml.

Checks the conda files (environment.yml, binder/environment.yml), the Binder hooks
(binder/postBuild, binder/start) and pins (binder/constraints.txt), the CI entry point
(.ci/run), the lock files (requirements-lock.txt for tests, requirements-user.txt for
users), the Makefile's setup logic, and the JupyterLab launcher (mbo_lab/launch.py).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

try:  # PyYAML comes with the lock (via jupyter-events); fall back to a tiny parser.
    import yaml
except ImportError:  # pragma: no cover - depends on the environment
    yaml = None

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {k: [Requirement(r) for r in v] for k, v in PROJECT["optional-dependencies"].items()}
PYTHON_VERSION = "3.11"

ENV_FILES = ["environment.yml", "binder/environment.yml"]


# --- helpers -------------------------------------------------------------------------


def _scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_simple_yaml(text: str) -> dict:
    """Parse the YAML subset used by conda environment files.

    Top-level ``key: value`` and ``key:`` + list, list items that are scalars or
    ``name:`` + nested list of scalars (the ``- pip:`` section). Comments are dropped.
    """
    doc: dict = {}
    key = None
    nested: list | None = None
    nested_indent = -1
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        body = line.strip()
        if indent == 0:
            k, _, v = body.partition(":")
            key, nested = k.strip(), None
            doc[key] = _scalar(v) if v.strip() else []
            continue
        if not body.startswith("- "):
            raise ValueError(f"unsupported YAML line: {raw!r}")
        item = body[2:].strip()
        if nested is not None and indent > nested_indent:
            nested.append(_scalar(item))
            continue
        if item.endswith(":") and " " not in item:
            nested = []
            nested_indent = indent
            doc[key].append({item[:-1]: nested})
        else:
            nested = None
            doc[key].append(_scalar(item))
    return doc


def load_yaml(path: Path) -> dict:
    text = path.read_text()
    return yaml.safe_load(text) if yaml is not None else parse_simple_yaml(text)


def conda_spec(spec: str) -> tuple[str, str]:
    """Split a conda match spec like ``numpy>=2.0`` or ``python=3.11`` into (name, rest)."""
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", spec.strip())
    assert m, f"unparseable conda spec {spec!r}"
    return canonicalize_name(m.group(1)), m.group(2).strip()


def env_packages(path: Path) -> tuple[dict[str, str], dict[str, Requirement], list[str]]:
    """(conda name -> spec rest, pip name -> Requirement, other pip lines) of an env file."""
    doc = load_yaml(path)
    conda: dict[str, str] = {}
    pip: dict[str, Requirement] = {}
    other: list[str] = []
    for dep in doc["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"{path}: unexpected section {dep}"
            for line in dep["pip"]:
                if line.startswith("-"):
                    other.append(line)
                else:
                    req = Requirement(line)
                    pip[canonicalize_name(req.name)] = req
        else:
            name, rest = conda_spec(dep)
            conda[name] = rest
    return conda, pip, other


def spec_of(path: Path, req: Requirement) -> SpecifierSet:
    """The version constraint that ``path`` puts on ``req``'s package (conda or pip)."""
    conda, pip, _ = env_packages(path)
    name = canonicalize_name(req.name)
    if name in pip:
        return pip[name].specifier
    if name in conda:
        return SpecifierSet(conda[name])
    raise AssertionError(f"{path.relative_to(ROOT)} does not list {req.name}")


def lock_pins(rel: str = "requirements-lock.txt") -> dict[str, str]:
    """canonical name -> pinned version of a lock (or constraints) file."""
    pins: dict[str, str] = {}
    for line in (ROOT / rel).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+!\-]+)(\s*;.*)?", line)
        assert m, f"{rel} line is not an exact pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{rel} pins {name} twice"
        pins[name] = m.group(2)
    return pins


#: What users get (make demo, Binder): the package, its `lab` extra and what the
#: notebooks need (`batch`); and the tools only the tests use.
USER_REQS = RUNTIME + EXTRAS["lab"] + EXTRAS["batch"]
TEST_ONLY = {"pytest", "pytest-timeout", "nbval", "hypothesis", "ruff", "playwright",
             "cyclonedx-bom", "coverage", "greenlet"}


def shell_lines(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a shell script, stripped."""
    out = []
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if s and not s.startswith("#"):
            out.append(s)
    return out


def assert_executable(path: Path) -> None:
    mode = path.stat().st_mode
    assert mode & stat.S_IXUSR, f"{path.relative_to(ROOT)} is not executable (chmod +x)"
    # git records the executable bit; make sure it is committed that way too.
    if (ROOT / ".git").exists() and shutil.which("git"):
        res = subprocess.run(
            ["git", "ls-files", "-s", str(path.relative_to(ROOT))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode == 0 and res.stdout.strip():
            assert res.stdout.split()[0] == "100755", (
                f"{path.relative_to(ROOT)} is tracked without the executable bit"
            )


def bash_syntax_ok(path: Path) -> None:
    res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, f"{path.relative_to(ROOT)}: {res.stderr}"


# --- the YAML fallback parser agrees with PyYAML ---------------------------------


@pytest.mark.parametrize("rel", ENV_FILES)
def test_simple_yaml_parser_matches_pyyaml(rel):
    text = (ROOT / rel).read_text()
    parsed = parse_simple_yaml(text)
    assert parsed["dependencies"], "no dependencies parsed"
    if yaml is None:
        pytest.skip("PyYAML not installed; the fallback parser is what the other tests use")
    assert parsed == yaml.safe_load(text)


# --- conda environment files -------------------------------------------------------


@pytest.mark.parametrize("rel", ENV_FILES)
@pytest.mark.parametrize("req", RUNTIME, ids=lambda r: r.name)
def test_env_file_lists_runtime_dependency(rel, req):
    # Same lower bound as pyproject.toml, not a looser or missing one.
    assert spec_of(ROOT / rel, req) == req.specifier, (
        f"{rel}: {req.name} must be constrained as in pyproject.toml ({req.specifier})"
    )


@pytest.mark.parametrize("extra", ["lab", "test", "batch"])
def test_root_environment_lists_extras(extra):
    for req in EXTRAS[extra]:
        assert spec_of(ROOT / "environment.yml", req) == req.specifier, req.name


def test_root_environment_installs_the_package_editable():
    _, _, other = env_packages(ROOT / "environment.yml")
    assert any(re.fullmatch(r"-e\s+\.(\[[a-z,]+\])?", line) for line in other), other


def test_binder_pins_are_the_user_lock():
    """binder/constraints.txt holds exactly the user lock's pins and environment.yml uses it."""
    assert lock_pins("binder/constraints.txt") == lock_pins("requirements-user.txt"), (
        "binder/constraints.txt is stale: run `make lock`"
    )
    _, pip, other = env_packages(ROOT / "binder/environment.yml")
    assert "-c constraints.txt" in other, "binder/environment.yml must use -c constraints.txt"
    pins = lock_pins("binder/constraints.txt")
    for name, req in pip.items():
        assert name in pins, f"binder/environment.yml installs {name}, which is not pinned"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])


def test_binder_environment_lists_runtime_lab_and_batch():
    path = ROOT / "binder/environment.yml"
    _, pip, _ = env_packages(path)
    for req in USER_REQS:
        assert spec_of(path, req) == req.specifier, req.name
        if req.extras:
            assert pip[canonicalize_name(req.name)].extras == req.extras, req.name


def test_binder_environment_has_lab_and_server_proxy():
    path = ROOT / "binder/environment.yml"
    proxy = spec_of(path, Requirement("jupyter-server-proxy"))
    assert proxy.contains("4.3.0") and not proxy.contains("4.2.9"), proxy
    conda, pip, _ = env_packages(path)
    assert "jupyter-server-proxy" in pip, "jupyter-server-proxy belongs in the pip section"
    assert "jupyterlab" in conda or "jupyterlab" in pip
    # repo2docker installs the package in postBuild, not from the environment file.
    assert not any(canonicalize_name(n) == "mbo-lab" for n in pip)


@pytest.mark.parametrize("rel", ENV_FILES)
def test_env_python_pin_matches_project(rel):
    conda, _, _ = env_packages(ROOT / rel)
    assert "python" in conda, f"{rel} must pin python"
    assert conda["python"] == f"={PYTHON_VERSION}", f"{rel}: python{conda['python']}"
    assert "pip" in conda, f"{rel} needs pip for its pip section"


def test_python_version_agrees_everywhere():
    requires = SpecifierSet(PROJECT["requires-python"])
    assert requires.contains(f"{PYTHON_VERSION}.0")
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + PYTHON_VERSION.replace(".", "")
    for rel in ("requirements-lock.txt", "requirements-user.txt"):
        header = (ROOT / rel).read_text().splitlines()[:3]
        assert any(f"--python-version {PYTHON_VERSION}" in h for h in header), (rel, header)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^LOCK_PYTHON\s*:?=\s*{re.escape(PYTHON_VERSION)}\s*$", makefile, re.M)


# --- lock file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel, wanted",
    [("requirements-lock.txt", RUNTIME + EXTRAS["lab"] + EXTRAS["batch"] + EXTRAS["test"]),
     ("requirements-user.txt", USER_REQS)],
)
def test_lock_pins_every_dependency_exactly(rel, wanted):
    pins = lock_pins(rel)
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{rel} does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{rel} pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}; "
            "run `make lock`"
        )
    assert "mbo-lab" not in pins, "the project itself is installed with -e ., not pinned"


def test_user_lock_is_the_test_lock_without_test_tools():
    user, full = lock_pins("requirements-user.txt"), lock_pins("requirements-lock.txt")
    # Users run exactly the versions CI tests: every user pin is in the test lock.
    differ = {n: (v, full.get(n)) for n, v in user.items() if full.get(n) != v}
    assert not differ, f"user lock pins that the test lock does not have: {differ}"
    assert not TEST_ONLY & set(user), f"test tools in the user lock: {TEST_ONLY & set(user)}"
    assert TEST_ONLY <= set(full), TEST_ONLY - set(full)
    # The lean lock is really leaner (today 131 vs 151 pins, 0.83 vs 1.05 GB installed).
    assert len(user) < len(full)


def test_lock_covers_transitive_dependencies():
    # A lock of only the direct dependencies would leave the rest floating.
    pins = lock_pins()
    direct = {canonicalize_name(r.name) for r in RUNTIME + EXTRAS["lab"] + EXTRAS["test"]}
    assert len(set(pins) - direct) > 50
    for transitive in ("llvmlite", "jupyter-server", "pyzmq", "greenlet"):
        assert transitive in pins, transitive
    user = lock_pins("requirements-user.txt")
    for transitive in ("llvmlite", "jupyter-server", "pyzmq", "ipykernel", "distributed"):
        assert transitive in user, transitive


# --- Binder hooks --------------------------------------------------------------------


def _assignments(path: Path) -> dict[str, str]:
    found = {}
    for line in shell_lines(path):
        m = re.fullmatch(r"export\s+([A-Z_]+)=(.*)", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def test_postbuild_installs_package_and_warms_numba():
    path = ROOT / "binder/postBuild"
    assert_executable(path)
    bash_syntax_ok(path)
    lines = shell_lines(path)
    assert path.read_text().startswith("#!/bin/bash") or path.read_text().startswith(
        "#!/usr/bin/env bash"
    )
    assert re.fullmatch(r"set -[a-z]*e[a-z]*( -o)?( pipefail)?", lines[0]), (
        "postBuild must start with set -e: repo2docker ignores errors otherwise"
    )
    install = [i for i, ln in enumerate(lines) if re.search(r"pip install\b", ln)]
    assert install, "postBuild must pip install the package"
    assert all(tok in lines[install[0]].split() for tok in ("--no-deps", "-e", "."))
    warm = [i for i, ln in enumerate(lines) if "mbo_lab.warmup()" in ln]
    assert warm and warm[0] > install[0], "warm numba after installing the package"
    env = _assignments(path)
    assert env.get("NUMBA_CPU_NAME") == "generic"
    assert "NUMBA_CACHE_DIR" in env
    exports = [i for i, ln in enumerate(lines) if ln.startswith("export NUMBA_")]
    assert max(exports) < warm[0], "set the numba variables before warming the cache"
    assert any("jupyter_server_proxy" in ln for ln in lines)
    assert not any("playwright install" in ln for ln in lines)


def test_start_sets_environment_and_execs():
    path = ROOT / "binder/start"
    assert_executable(path)
    bash_syntax_ok(path)
    lines = shell_lines(path)
    assert lines[-1] == 'exec "$@"', f'binder/start must end with exec "$@", not {lines[-1]!r}'
    # The cache that postBuild warmed is the one used at run time.
    assert (
        _assignments(path)["NUMBA_CACHE_DIR"]
        == _assignments(ROOT / "binder/postBuild")["NUMBA_CACHE_DIR"]
    )


def test_start_runs_the_given_command_with_its_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "JUPYTER_"))}
    env["HOME"] = str(tmp_path)
    probe = (
        "import os, sys; print(os.environ['NUMBA_CPU_NAME'], os.environ['NUMBA_CACHE_DIR'], "
        "os.environ['JUPYTER_WIDGETS_ECHO'], sys.argv[1])"
    )
    res = subprocess.run(
        ["bash", str(ROOT / "binder/start"), sys.executable, "-c", probe, "arg with space"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    cpu, cache, echo, arg = res.stdout.strip().split(" ", 3)
    assert (cpu, echo, arg) == ("generic", "0", "arg with space")
    assert Path(cache).is_relative_to(tmp_path) and Path(cache).is_dir()


# --- CI ----------------------------------------------------------------------------


def test_ci_run_installs_system_packages_and_runs_make_test():
    path = ROOT / ".ci/run"
    bash_syntax_ok(path)
    text = path.read_text()
    lines = shell_lines(path)
    assert "set -euo pipefail" in lines
    assert "export DEBIAN_FRONTEND=noninteractive" in lines
    assert re.search(r"apt-get update", text)
    install = re.search(r"apt-get install -y[^\n]*(\\\n[^\n]*)*", text)
    assert install, ".ci/run must apt-get install -y"
    packages = re.search(r"apt_packages=\(([^)]*)\)", text)
    assert packages and {"chromium", "prometheus"} <= set(packages.group(1).split())
    assert "export MBO_LAB_REQUIRE_BROWSER=1" in lines
    assert "export MBO_LAB_REQUIRE_PROMETHEUS=1" in lines
    # The last command is the developer's own `make test`, so its status is CI's.
    assert lines[-1] in ("make test", "exec make test")
    assert not any("playwright install" in ln for ln in lines)
    # prometheus must not be started as a service: the tests start their own.
    assert not re.search(r"(systemctl|service)\s+(start|enable)|prometheus\s+&", text)


def test_ci_run_fails_when_make_test_fails(tmp_path):
    """Run .ci/run with stubbed apt-get/make: a failing `make test` fails CI."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    stubs = {
        "apt-get": f'echo "apt-get $*" >> {log}\n',
        "make": f'echo "make $* REQUIRE=$MBO_LAB_REQUIRE_BROWSER$MBO_LAB_REQUIRE_PROMETHEUS" '
        f">> {log}\nexit ${{STUB_MAKE_RC:-0}}\n",
        "chromium": "echo Chromium 1\n",
        "prometheus": "echo prometheus 1\n",
        "id": "echo 0\n",
        "sleep": "true\n",
    }
    for name, body in stubs.items():
        p = bindir / name
        p.write_text("#!/bin/bash\n" + body)
        p.chmod(0o755)
    # Run a copy, with the policy-rc.d it may create pointed into tmp_path.
    policy = tmp_path / "policy-rc.d"
    copy = tmp_path / "repo"
    (copy / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci/run", copy / ".ci/run")
    base = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CI": "true",
        "CI_POLICY_RC_D": str(policy),
    }
    for rc, expect_ok in ((0, True), (2, False)):
        res = subprocess.run(
            ["bash", str(copy / ".ci/run")],
            env={**base, "STUB_MAKE_RC": str(rc)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (res.returncode == 0) is expect_ok, (rc, res.returncode, res.stderr)
        # The services guard it made for apt-get is gone again.
        assert not policy.exists()
    calls = log.read_text().splitlines()
    assert any(
        c.startswith("apt-get install") and "chromium" in c and "prometheus" in c for c in calls
    ), calls
    assert "make test REQUIRE=11" in calls, calls


def test_ci_data_file_reachable_through_default_path():
    """The default data path (../shared/data beside the checkout) needs an in-tree import."""
    import mbo_lab
    from mbo_lab.config import get_settings

    assert Path(mbo_lab.__file__).resolve().parent.parent == ROOT, (
        "mbo_lab must be imported from this checkout (pip install -e .), or the default "
        "data path does not point beside it"
    )
    if os.environ.get("MBO_LAB_DATA_PATH"):
        pytest.skip("MBO_LAB_DATA_PATH overrides the default")
    default = Path(get_settings().data_path)
    assert default == ROOT.parent / "shared" / "data" / "CLX5_mbo.dbn"
    if os.environ.get("CI") == "true":
        assert default.is_file(), f"CI has no {default}"


# --- Makefile ------------------------------------------------------------------------

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def make(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_make
def test_make_targets_exist():
    for target in ("demo", "test", "lock", "sbom", "setup", "setup-user", "clean-notebooks"):
        res = make("-n", target, "VENV=/nonexistent/venv")
        assert res.returncode == 0, (target, res.stderr)


@needs_make
def test_make_setup_from_scratch_uses_the_lock(tmp_path):
    venv = tmp_path / "venv"
    out = make("-n", "setup", f"VENV={venv}").stdout
    assert f"-m venv {venv}" in out
    assert re.search(r"pip install .*uv==\d+\.\d+\.\d+", out)
    assert "-r requirements-lock.txt" in out
    assert re.search(r"--no-deps -e \.", out)
    assert "playwright install" not in out


@needs_make
def test_make_setup_is_idempotent_and_keyed_on_the_lock(tmp_path):
    venv = tmp_path / "venv"
    stamp = make("-s", "print-STAMP", f"VENV={venv}").stdout.strip()
    assert re.fullmatch(rf"{re.escape(str(venv))}/\.lock-[0-9a-f]{{16}}", stamp), stamp
    # Pretend a complete setup happened: python, uv and the stamp exist.
    (venv / "bin").mkdir(parents=True)
    for exe in ("python", "uv"):
        (venv / "bin" / exe).write_text("#!/bin/sh\n")
        (venv / "bin" / exe).chmod(0o755)
    Path(stamp).touch()
    res = make("-n", "setup", f"VENV={venv}")
    assert res.returncode == 0, res.stderr
    assert "pip install" not in res.stdout and "-m venv" not in res.stdout, res.stdout
    # Another lock file content means another stamp, so setup runs again.
    other = tmp_path / "other-lock.txt"
    other.write_text("numpy==2.0.0\n")
    other_stamp = make("-s", "print-STAMP", f"VENV={venv}", f"LOCK={other}").stdout.strip()
    assert other_stamp != stamp
    res = make("-n", "setup", f"VENV={venv}", f"LOCK={other}")
    assert f"-r {other}" in res.stdout


@needs_make
def test_make_test_runs_pytest_with_nbval_and_numba_cache(tmp_path):
    out = make("-n", "test", "VENV=/nonexistent/venv").stdout
    pytest_line = next(ln for ln in out.splitlines() if "-m pytest" in ln)
    assert pytest_line.startswith("/nonexistent/venv/bin/python -m pytest tests")
    assert "-p no:cacheprovider" in pytest_line
    has_notebooks = any(
        ".ipynb_checkpoints" not in p.parts for p in (ROOT / "notebooks").rglob("*.ipynb")
    )
    assert ("--nbval-lax" in pytest_line) is has_notebooks
    assert ("--nbval-current-env" in pytest_line) is has_notebooks
    cache = Path(make("-s", "print-NUMBA_CACHE_DIR").stdout.strip())
    if "NUMBA_CACHE_DIR" not in os.environ:
        assert cache.is_relative_to(ROOT / ".numba_cache")
    assert ".numba_cache/" in (ROOT / ".gitignore").read_text().split()


@needs_make
def test_make_lock_and_sbom_commands():
    out = make("-n", "lock", "VENV=/nonexistent/venv").stdout
    flat = re.sub(r"[ \t]+", " ", out.replace("\\\n", " "))
    full = re.search(r"uv pip compile pyproject\.toml --extra test --extra lab --extra batch "
                     r"--python-version 3\.11 --python-platform linux .*-o requirements-lock\.txt",
                     flat)
    user = re.search(r"uv pip compile pyproject\.toml --extra lab --extra batch "
                     r"-c requirements-lock\.txt --python-version 3\.11 .*-o requirements-user\.txt",
                     flat)
    assert full and user, out
    assert full.start() < user.start(), "the user lock is resolved under the test lock's pins"
    assert "extra test" not in user.group(0)
    assert re.search(r"grep .*requirements-user\.txt.*> binder/constraints\.txt", flat), out
    assert re.search(r"^UV_VERSION\s*\?=\s*\d+\.\d+\.\d+$", (ROOT / "Makefile").read_text(), re.M)
    out = make("-n", "sbom", "VENV=/nonexistent/venv").stdout
    assert re.search(r"cyclonedx-py environment \S*/nonexistent/venv/bin/python", out), out
    assert "-o sbom.json" in out


@needs_make
def test_make_setup_user_installs_the_user_lock_only(tmp_path):
    venv = tmp_path / "uenv"
    out = make("-n", "setup-user", f"VENV={venv}").stdout
    assert f"-m venv {venv}" in out
    assert "-r requirements-user.txt" in out and "requirements-lock.txt" not in out, out
    assert re.search(r"--no-deps -e \.", out)
    stamp = make("-s", "print-USER_STAMP", f"VENV={venv}").stdout.strip()
    assert re.fullmatch(rf"{re.escape(str(venv))}/\.user-[0-9a-f]{{16}}", stamp), stamp
    assert stamp != make("-s", "print-STAMP", f"VENV={venv}").stdout.strip()


@needs_make
def test_make_demo_starts_jupyterlab_from_the_user_env():
    out = make("-n", "demo", "VENV=/nonexistent/venv").stdout
    assert "-r requirements-user.txt" in out and "requirements-lock.txt" not in out, out
    assert "/nonexistent/venv/bin/python -m mbo_lab.launch" in out.splitlines()[-1], out
    out = make("-n", "demo", "VENV=/nonexistent/venv", "DEMO_ARGS=f.dbn --no-browser").stdout
    assert out.splitlines()[-1].endswith("-m mbo_lab.launch f.dbn --no-browser"), out
    scripts = PROJECT.get("scripts", {})
    assert scripts.get("mbo-lab") == "mbo_lab.cli:main"


@needs_make
def test_make_clean_notebooks_runs_the_cleaner_on_every_notebook():
    out = make("-n", "clean-notebooks", "VENV=/nonexistent/venv").stdout
    line = out.splitlines()[-1]
    assert line.startswith("/nonexistent/venv/bin/python -m mbo_lab.launch --clean-notebooks")
    assert {ROOT / p for p in line.split()[4:]} == set(NOTEBOOKS), line
    out = make("-n", "check-notebooks", "VENV=/nonexistent/venv").stdout
    assert "--clean-notebooks --check" in out.splitlines()[-1]


def test_project_requirements_parse_and_have_lower_bounds():
    # Every dependency carries a lower bound that the env files and lock can mirror.
    for req in RUNTIME + EXTRAS["lab"] + EXTRAS["test"]:
        assert any(s.operator == ">=" for s in req.specifier), req
        Version(next(s.version for s in req.specifier if s.operator == ">="))


# --- every notebook import is satisfied by the Binder environment alone -----------------

NOTEBOOKS = sorted(
    p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
)


def _imports_of(source: str) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
    return mods


def notebook_imports(path: Path) -> set[str]:
    """Top-level modules imported by a notebook's code cells (IPython syntax allowed)."""
    from IPython.core.inputtransformer2 import TransformerManager

    tm = TransformerManager()
    mods: set[str] = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            mods |= _imports_of(tm.transform_cell(src))
    return mods


def package_imports() -> set[str]:
    """Top-level modules imported anywhere in mbo_lab/ (what `import mbo_lab...` may pull)."""
    mods: set[str] = set()
    for py in (ROOT / "mbo_lab").rglob("*.py"):
        mods |= _imports_of(py.read_text())
    return mods


def requirement_closure(reqs: list[Requirement]) -> set[str]:
    """Distributions that installing ``reqs`` installs (from this environment's metadata)."""
    from importlib.metadata import PackageNotFoundError, distribution

    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    stack = [(canonicalize_name(r.name), frozenset(r.extras)) for r in reqs]
    while stack:
        name, extras = stack.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        names.add(name)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # reported by the caller (an import it should provide is missing)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not any(
                req.marker.evaluate({"extra": e}) for e in (sorted(extras) or [""])
            ):
                continue
            stack.append((canonicalize_name(req.name), frozenset(req.extras)))
    return names


def binder_closure() -> set[str]:
    conda, pip, _ = env_packages(ROOT / "binder/environment.yml")
    declared = [Requirement(n) for n in conda if n != "python"] + list(pip.values())
    return requirement_closure(declared)


def test_notebook_imports_parse():
    assert NOTEBOOKS, "no notebooks found"
    assert {"mbo_lab"} <= set().union(*(notebook_imports(nb) for nb in NOTEBOOKS))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_binder_environment_satisfies_every_notebook_import(nb):
    """A notebook that runs in CI also runs on Binder: each import comes from a package
    binder/environment.yml declares (or one of their dependencies), or from mbo_lab
    (installed by postBuild), whose own imports are checked as well."""
    from importlib.metadata import packages_distributions

    provided = binder_closure()
    dists = packages_distributions()
    mods = notebook_imports(nb)
    if "mbo_lab" in mods:
        mods |= package_imports()
    missing = {}
    for mod in sorted(mods - set(sys.stdlib_module_names) - {"mbo_lab", "__future__"}):
        owners = {canonicalize_name(d) for d in dists.get(mod, [])}
        assert owners, f"{nb.name} imports {mod}, which is not installed here either"
        if not owners & provided:
            missing[mod] = sorted(owners)
    assert not missing, (
        f"{nb.name}: imports (its own or mbo_lab's) not provided by binder/environment.yml: "
        f"{missing}; add the "
        "distribution (and to pyproject's lab/batch extras), then `make lock`"
    )


def test_everything_binder_installs_is_pinned():
    pins = lock_pins("binder/constraints.txt")
    unpinned = binder_closure() - set(pins) - {"pip", "python"}
    assert not unpinned, f"Binder would install unpinned: {sorted(unpinned)}; `make lock`"


# --- JupyterLab launcher: `make demo`, `mbo-lab lab [FILE]` (mbo_lab/launch.py) ---------------


def test_launch_command_is_headless_safe_and_local():
    from mbo_lab import launch

    root, nb = launch.dashboard_notebook()
    assert (root, nb) == (ROOT, ROOT / "notebooks" / "02_dashboard.ipynb")
    cmd = launch.lab_command(root, nb, 8899, Path("/tmp/ws"))
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"], "JupyterLab from this environment"
    for flag in ("--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=8899",
                 "--ServerApp.port_retries=0", f"--ServerApp.root_dir={ROOT}",
                 "--ServerApp.default_url=/lab/tree/notebooks/02_dashboard.ipynb",
                 "--LabApp.workspaces_dir=/tmp/ws"):
        assert flag in cmd, flag
    assert not any("token" in c.lower() for c in cmd), "the token goes through the environment"
    # No browser without a display (Linux) or in CI, whatever webbrowser would pick.
    if sys.platform.startswith("linux"):
        assert launch.can_open_browser({}) is False
    assert launch.can_open_browser({"CI": "true", "DISPLAY": ":0"}) is False
    assert launch.can_open_browser({"MBO_LAB_NO_BROWSER": "1", "DISPLAY": ":0"}) is False


def test_launch_rejects_a_missing_file_before_starting_anything(tmp_path):
    from mbo_lab import launch
    from mbo_lab.errors import DataError

    with pytest.raises(DataError, match="no such file"):
        launch.main(tmp_path / "missing.dbn", open_browser=False)
    res = subprocess.run([sys.executable, "-m", "mbo_lab.launch", "--no-browser",
                          str(tmp_path / "missing.dbn")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "no such file" in res.stderr, res


def test_launch_writes_a_dashboard_notebook_outside_a_checkout(tmp_path, monkeypatch):
    from mbo_lab import launch

    monkeypatch.setattr(launch, "PROJECT_ROOT", tmp_path / "site-packages")
    monkeypatch.setenv("MBO_LAB_CACHE_DIR", str(tmp_path / "cache"))
    root, nb = launch.dashboard_notebook()
    assert root == tmp_path / "cache" / "notebooks" and nb.parent == root
    cells = json.loads(nb.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "MBO_LAB_DATA_PATH" not in code and "get_settings().data_path" in code
    assert ".dashboard(" in code
    compile(code, str(nb), "exec")


def _pids_with_env(key: str, value: str) -> dict[int, list[str]]:
    """pid -> argv of every process whose environment has key=value (Linux /proc)."""
    found = {}
    needle = f"{key}={value}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                found[int(d.name)] = (d / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
    return found


def _get(url: str, token: str | None = None, data: bytes | None = None):
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"token {token}"} if token else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_launch_serves_the_dashboard_on_the_file_and_stops_cleanly(tmp_path):
    """`python -m mbo_lab.launch FILE` (what `make demo` and `mbo-lab lab` run): prints the
    URL with its token, serves the dashboard notebook, its kernels get MBO_LAB_DATA_PATH and
    run in this environment, and Ctrl-C stops the server and its kernels."""
    import queue
    import threading
    import uuid

    import mbo_lab

    data = mbo_lab.write_synth(tmp_path / "small.dbn", 2_000, seed=3)
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items()
           if k not in ("MBO_LAB_DATA_PATH", "DISPLAY", "WAYLAND_DISPLAY", "JUPYTER_TOKEN")}
    for name in ("runtime", "config", "data", "ipython"):
        (tmp_path / name).mkdir()
    env.update(MBO_LAB_LAUNCH_TEST=marker, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), IPYTHONDIR=str(tmp_path / "ipython"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mbo_lab.launch", "--no-browser", str(data)],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    try:
        url_re = re.compile(r"(http://127\.0\.0\.1:(\d+))/lab/tree/notebooks/02_dashboard\.ipynb"
                            r"\?token=([0-9a-f]{32,})")
        out, m = [], None
        deadline = time.monotonic() + 180
        while m is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                out.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            m = url_re.search(out[-1])
        assert m, f"no URL printed; stdout={out} stderr={proc.stderr.read() if proc.poll() is not None else ''}"
        base, token = m.group(1), m.group(3)
        while "Ctrl-C" not in out[-1] and time.monotonic() < deadline:
            out.append(lines.get(timeout=30))
        assert any(str(data) in ln for ln in out), out  # says which data it shows

        # The notebook through the Jupyter contents API, with the token only.
        api = f"{base}/api/contents/notebooks/02_dashboard.ipynb?content=1"
        assert _get(api)[0] == 403, "the server must require the token"
        status, body = _get(api, token)
        assert status == 200, body[:300]
        model = json.loads(body)
        assert model["type"] == "notebook" and model["name"] == "02_dashboard.ipynb"
        on_disk = json.loads((ROOT / "notebooks/02_dashboard.ipynb").read_text())["cells"]
        assert [c["source"] for c in model["content"]["cells"]] == [
            c["source"] if isinstance(c["source"], str) else "".join(c["source"])
            for c in on_disk
        ]
        status, page = _get(m.group(0))
        assert status == 200 and b"jupyter-config-data" in page
        config = json.loads(re.search(rb'id="jupyter-config-data"[^>]*>\s*(\{.*?\})\s*</script>',
                                      page, re.S).group(1))
        # No "Jupyter news?" prompt over the dashboard.
        assert "@jupyterlab/apputils-extension:announcements" in config["disabledExtensions"]

        # A kernel for the notebook: this environment's Python, with the file to show.
        status, body = _get(f"{base}/api/sessions", token, json.dumps({
            "path": "notebooks/02_dashboard.ipynb", "type": "notebook", "name": "",
            "kernel": {"name": "python3"}}).encode())
        assert status == 201, body[:300]
        kernels: dict[int, list[str]] = {}
        while not kernels and time.monotonic() < deadline:
            kernels = {p: a for p, a in _pids_with_env("MBO_LAB_LAUNCH_TEST", marker).items()
                       if "ipykernel_launcher" in a}
            time.sleep(0.2)
        assert len(kernels) == 1, kernels
        (kpid, argv), = kernels.items()
        assert argv[0] == sys.executable, argv
        kenv = dict(e.split("=", 1) for e in
                    (Path(f"/proc/{kpid}/environ").read_bytes().decode().split("\0")) if "=" in e)
        assert kenv["MBO_LAB_DATA_PATH"] == str(data)
        assert kenv.get("JUPYTER_WIDGETS_ECHO") == "0"

        # Ctrl-C: the launcher stops JupyterLab, which shuts the kernel down.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, proc.stderr.read()
        left = _pids_with_env("MBO_LAB_LAUNCH_TEST", marker)
        t0 = time.monotonic()
        while left and time.monotonic() - t0 < 10:
            time.sleep(0.2)
            left = _pids_with_env("MBO_LAB_LAUNCH_TEST", marker)
        assert not left, f"processes left running: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _pids_with_env("MBO_LAB_LAUNCH_TEST", marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.skipif(not os.environ.get("UV_COMPILE_BYTECODE"),
                    reason="checks the venv `make setup` builds (it exports UV_COMPILE_BYTECODE)")
def test_make_setup_compiles_the_venv_bytecode():
    """`make setup` leaves cached bytecode for the heavy imports: without it every process
    compiles pandas/numba/pyarrow from source (and never caches them where
    PYTHONDONTWRITEBYTECODE=1), which made import + the first bbo 2.4 s instead of 0.8 s."""
    import importlib.util

    import numba
    import pandas
    import pandas.core.frame
    import pyarrow

    # imported here, these have bytecode anyway unless PYTHONDONTWRITEBYTECODE=1; the
    # packages' test folders below are imported by nothing, so only compileall wrote theirs
    sources = [m.__file__ for m in (pandas, pandas.core.frame, numba, numba.core.dispatcher,
                                    pyarrow)]
    sources += [str(Path(m.__file__).parent / "tests" / "__init__.py")
                for m in (pandas, numba, pyarrow)]
    for src in sources:
        assert Path(src).is_file(), src
        pyc = Path(importlib.util.cache_from_source(src))
        assert pyc.is_file(), f"{src} has no cached bytecode ({pyc})"
        assert pyc.stat().st_mtime >= Path(src).stat().st_mtime - 1
