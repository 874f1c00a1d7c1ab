"""The sandbox where researchers run it, not only as root in this folder.

Each case copies the package to a fresh place, starts it the way a user would (their
interpreter, their user, their container's seccomp profile) and runs ``sdlib doctor``: the
built-in hostile self-test through the real sandbox, observed from outside. Every mode must
start, and must contain everything it claims to contain; where a guarantee is missing the
report must say so (and then the tests check that it is not claimed).

Modes: root with the project and a venv under /tmp, /var/tmp, /dev/shm or a read-only
mount; an ordinary user (created when the tests run as root) with a home of mode 700; and
both with ``unshare`` refused, as Docker's and Kubernetes' default seccomp profiles do.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"  # an interpreter every user can run (pyenv's is in /root)
TEST_USER = "sdlib-test"
# Installs a seccomp filter that makes unshare(2) and clone(2) with namespace flags fail with
# EPERM, then execs the command: a container that refuses namespaces.
DENY_UNSHARE = """\
import ctypes, os, struct, sys
sys.path.insert(0, {package!r})
import sandbox_layers as layers
code = layers.seccomp_program(denied=("unshare",), namespaces=True)
buf = ctypes.create_string_buffer(code, len(code))
prog = ctypes.create_string_buffer(struct.pack("HxxxxxxP", len(code) // 8, ctypes.addressof(buf)), 16)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, prog, 0, 0) == 0, ctypes.get_errno()
os.execv(sys.argv[1], sys.argv[1:])
"""

pytestmark = pytest.mark.skipif(
    not os.path.exists(SYSTEM_PYTHON), reason="needs Debian's /usr/bin/python3"
)


def _test_user() -> tuple[int, int, Path]:
    """An ordinary user with a home of mode 700 (created when running as root)."""
    if os.getuid() != 0:
        home = Path(tempfile.mkdtemp(prefix="sdlib-home-"))
        home.chmod(0o700)
        return os.getuid(), os.getgid(), home
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", TEST_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(TEST_USER)
    home = Path(entry.pw_dir)
    home.mkdir(exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    home.chmod(0o700)
    return entry.pw_uid, entry.pw_gid, home


def _install(base: Path, owner: tuple[int, int] | None = None) -> tuple[Path, Path]:
    """A clone of the package and a venv under ``base``, as a user would make them."""
    project = base / "project"
    shutil.copytree(ROOT / "sdlib", project / "sdlib", ignore=shutil.ignore_patterns("__pycache__"))
    venv = base / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    if owner is not None:
        for path in [base, *base.rglob("*")]:
            os.lchown(path, *owner)
    return project, venv / "bin" / "python"


def _doctor(
    python: Path,
    project: Path,
    *,
    user: tuple[int, int, Path] | None = None,
    deny_unshare: bool = False,
    wrapper: list[str] | None = None,
) -> dict:
    command = [str(python), "-m", "sdlib.execution.doctor", "--json"]
    if deny_unshare:
        script = project / "deny_unshare.py"
        script.write_text(DENY_UNSHARE.format(package=str(project / "sdlib" / "execution")))
        script.chmod(0o644)
        command = [str(python), str(script), *command]
    command = (wrapper or []) + command
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPENAI_API_KEY": "sk-SECRET-123"}
    kwargs: dict = {}
    if user is not None and os.getuid() == 0:
        uid, gid, home = user
        kwargs.update(user=uid, group=gid, extra_groups=[])
        env["HOME"] = str(home)
    else:
        env["HOME"] = str(user[2]) if user else os.environ.get("HOME", "/root")
    done = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=240, **kwargs
    )
    assert done.stdout.strip(), f"doctor printed nothing; stderr:\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout)
    assert "error" not in report, report["error"]
    failed = [c for c in report["checks"] if not c["contained"]]
    iso = report["isolation"]
    # A check may only get through where the report says that guarantee is missing.
    claimed_but_failed = [
        c for c in failed if _guarantee_of(c["name"]) not in (iso["missing"] or {})
    ]
    assert not claimed_but_failed, (claimed_but_failed, iso)
    assert done.returncode == (1 if failed else 0)
    return report


def _guarantee_of(check: str) -> str:
    return {
        "write-outside": "filesystem",
        "delete-outside": "filesystem",
        "read-private": "filesystem",
        "caller-proc": "filesystem",
        "loopback": "network",
        "kill-parent": "processes",
        "escape": "processes",
        "sysv-shm": "ipc",
        "keyring": "ipc",
    }.get(check, "always")


def _everything_contained(report: dict) -> None:
    assert report["ok"], [c for c in report["checks"] if not c["contained"]]
    assert report["isolation"]["missing"] == {}


@pytest.fixture
def place(request):
    base = Path(tempfile.mkdtemp(prefix="sdlib-env-", dir=request.param))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("place", ["/tmp", "/var/tmp", "/dev/shm"], indirect=True)
def test_root_with_the_project_and_venv_in_a_temp_folder(place):
    project, python = _install(place)
    site = next((place / "venv" / "lib").glob("python3*")) / "site-packages"
    (site / "sdlib_probe_module.py").write_text("VALUE = 42\n")
    probe = (  # a module of the venv imports inside the sandbox: the venv is bound back
        "from sdlib.execution.sandbox import Sandbox, SandboxConfig\n"
        "from sdlib.execution.problems import Problem, TestCase\n"
        "p = Problem('p', 'unit', 'test', '', '', 'f', '', tests=(TestCase('call', expected=42),))\n"
        "with Sandbox(SandboxConfig(workers=1)) as sb:\n"
        "    v = sb.run(p, 'import sdlib_probe_module\\ndef f():\\n    return sdlib_probe_module.VALUE')\n"
        "print(v.status, v.feedback)\n"
    )
    done = subprocess.run([str(python), "-c", probe], cwd=project, capture_output=True, text=True)
    assert done.stdout.startswith("pass"), done.stdout + done.stderr
    report = _doctor(python, project)
    assert report["isolation"]["mode"] == ("namespaces" if os.getuid() == 0 else "userns")
    assert str(place / "venv") in report["isolation"]["exposed"]
    assert str(project) not in report["isolation"]["exposed"]
    _everything_contained(report)


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("unshare"), reason="needs root")
def test_root_with_the_project_on_a_read_only_mount(tmp_path):
    tmp_path.chmod(0o755)
    source, python = _install(tmp_path)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    script = (
        f"mount --bind {source} {readonly} && mount -o remount,bind,ro {readonly} && "
        f"touch {readonly}/probe 2>/dev/null && exit 3; cd {readonly} && "
        f"exec {python} -m sdlib.execution.doctor --json"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode != 3, "the mount is not read-only"
    report = json.loads(done.stdout)
    assert "error" not in report, report.get("error")
    _everything_contained(report)


def test_ordinary_user_with_a_private_home():
    user = _test_user()
    base = Path(tempfile.mkdtemp(prefix="sdlib-user-"))
    base.chmod(0o755)
    try:
        project, python = _install(base, owner=user[:2])
        report = _doctor(python, project, user=user)
        assert report["machine"]["user"].startswith(str(user[0]))
        _everything_contained(report)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("as_user", [False, True], ids=["root", "user"])
def test_unshare_refused_falls_back_to_landlock_and_seccomp(as_user):
    user = _test_user() if as_user else None
    base = Path(tempfile.mkdtemp(prefix="sdlib-nons-"))
    base.chmod(0o755)
    try:
        project, python = _install(base, owner=user[:2] if user else None)
        report = _doctor(python, project, user=user, deny_unshare=True)
        iso = report["isolation"]
        assert iso["mode"] == "rlimits"
        assert "Operation not permitted" in iso["why_not_namespaces"]
        assert {"landlock", "seccomp"} <= set(iso["layers"])
        # This kernel (Landlock ABI >= 6, seccomp) still contains everything.
        if report["machine"]["landlock_abi"] >= 6:
            _everything_contained(report)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_required_namespaces_where_unshare_is_refused_say_why_and_how():
    base = Path(tempfile.mkdtemp(prefix="sdlib-req-"))
    base.chmod(0o755)
    try:
        project, python = _install(base)
        script = project / "deny_unshare.py"
        script.write_text(DENY_UNSHARE.format(package=str(project / "sdlib" / "execution")))
        probe = (
            "from sdlib.execution.sandbox import Sandbox, SandboxConfig, SandboxUnavailable\n"
            "try:\n    Sandbox(SandboxConfig(workers=1, isolation='namespaces'))\n"
            "except SandboxUnavailable as exc:\n    print(exc)\n"
        )
        done = subprocess.run(
            [str(python), str(script), str(python), "-c", probe],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
        )
        message = done.stdout
        assert "namespaces were required" in message and "Operation not permitted" in message
        assert "isolation='auto'" in message  # the fix is a different setting
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("as_user", [False, True], ids=["root", "user"])
def test_the_doctor_reports_what_isolation_none_leaves_open(as_user):
    """Resource limits alone: the report must not claim what it cannot contain. Run by an
    ordinary user (the job then runs as that user), the doctor must not kill every process
    of the user, itself and this test included."""
    user = _test_user() if as_user else None
    base = Path(tempfile.mkdtemp(prefix="sdlib-none-"))
    base.chmod(0o755)
    try:
        project, python = _install(base, owner=user[:2] if user else None)
        kwargs: dict = {}
        if user is not None and os.getuid() == 0:
            kwargs.update(user=user[0], group=user[1], extra_groups=[])
        done = subprocess.run(
            [str(python), "-m", "sdlib.execution.doctor", "--json", "--isolation", "none"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "HOME": str(user[2] if user else base)},
            **kwargs,
        )
        report = json.loads(done.stdout)
        assert set(report["isolation"]["missing"]) == {"filesystem", "network", "processes", "ipc"}
        assert done.returncode == 1  # something got through, and the exit code says so
        assert not report["ok"]
        assert "WARNING: the sandbox is weakened" in done.stderr
        kill = next(c for c in report["checks"] if c["name"] == "kill-parent")
        if as_user or os.getuid() != 0:  # the job runs as the caller: refused, not run
            assert not kill["contained"] and "not run" in kill["detail"], kill
        else:  # root's jobs run as another uid, which can signal none of root's processes
            assert "not run" not in kill["detail"], kill
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_doctor_runs_from_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "sdlib.workbench.cli", "doctor"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 14 contained" in done.stdout
    assert "landlock" in done.stdout
