"""Packaging and environment files agree with pyproject.toml.

Checks the conda files (environment.yml, binder/environment.yml), the Binder hooks
(binder/postBuild, binder/start), the CI entry point (.ci/run), the lock file
(requirements-lock.txt) and the Makefile's setup logic.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
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


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+!\-]+)(\s*;.*)?", line)
        assert m, f"requirements-lock.txt line is not an exact pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


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


@pytest.mark.parametrize("extra", ["lab", "test"])
def test_root_environment_lists_extras(extra):
    for req in EXTRAS[extra]:
        assert spec_of(ROOT / "environment.yml", req) == req.specifier, req.name


def test_root_environment_installs_the_package_editable():
    _, _, other = env_packages(ROOT / "environment.yml")
    assert any(re.fullmatch(r"-e\s+\.(\[[a-z,]+\])?", line) for line in other), other


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
    header = (ROOT / "requirements-lock.txt").read_text().splitlines()[:3]
    assert any(f"--python-version {PYTHON_VERSION}" in h for h in header), header
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^LOCK_PYTHON\s*:?=\s*{re.escape(PYTHON_VERSION)}\s*$", makefile, re.M)


# --- lock file -------------------------------------------------------------------------


def test_lock_pins_every_dependency_exactly():
    pins = lock_pins()
    wanted = RUNTIME + EXTRAS["lab"] + EXTRAS["test"]
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements-lock.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}; "
            "run `make lock`"
        )
    assert "mbo-lab" not in pins, "the project itself is installed with -e ., not pinned"


def test_lock_covers_transitive_dependencies():
    # A lock of only the direct dependencies would leave the rest floating.
    pins = lock_pins()
    direct = {canonicalize_name(r.name) for r in RUNTIME + EXTRAS["lab"] + EXTRAS["test"]}
    assert len(set(pins) - direct) > 50
    for transitive in ("llvmlite", "jupyter-server", "pyzmq", "greenlet"):
        assert transitive in pins, transitive


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
    for target in ("demo", "test", "lock", "sbom", "setup"):
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
    assert re.search(
        r"uv pip compile pyproject\.toml --extra test --extra lab\s*\\?\s*"
        r"--python-version 3\.11",
        out,
    ), out
    assert "-o requirements-lock.txt" in out
    out = make("-n", "sbom", "VENV=/nonexistent/venv").stdout
    assert re.search(r"cyclonedx-py environment \S*/nonexistent/venv/bin/python", out), out
    assert "-o sbom.json" in out


@needs_make
def test_make_demo_runs_the_cli():
    out = make("-n", "demo", "VENV=/nonexistent/venv").stdout
    assert "/nonexistent/venv/bin/mbo-lab demo" in out
    scripts = PROJECT.get("scripts", {})
    assert scripts.get("mbo-lab") == "mbo_lab.cli:main"


def test_project_requirements_parse_and_have_lower_bounds():
    # Every dependency carries a lower bound that the env files and lock can mirror.
    for req in RUNTIME + EXTRAS["lab"] + EXTRAS["test"]:
        assert any(s.operator == ">=" for s in req.specifier), req
        Version(next(s.version for s in req.specifier if s.operator == ">="))
