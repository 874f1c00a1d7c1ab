"""``sdlib doctor``: what this machine's sandbox contains, checked by hostile programs.

Prints the kernel, the user and which layers the machine gives, then runs a short built-in
hostile self-test through the real sandbox and looks, from outside, at what each program
managed: a file written or deleted outside its job, a private file or a secret read, a
connection made, a process killed or left behind, a channel to a later job. Exits 1 if
anything got through. Standard library only, like the sandbox, so that it runs on a fresh
node before anything else is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sdlib.execution import sandbox_layers
from sdlib.execution.problems import Problem, TestCase
from sdlib.execution.sandbox import (
    GUARANTEES,
    ISOLATION_LEVELS,
    Sandbox,
    SandboxConfig,
    SandboxUnavailable,
)

SECRET_VAR = "SDLIB_DOCTOR_SECRET"


@dataclass
class Check:
    name: str
    what: str  # what the program tries
    contained: bool
    detail: str = ""


def _problem(name: str, expected: object) -> Problem:
    """``f()`` must return ``expected``: a pass means the program got what it should not."""
    test = TestCase("call", inputs=(), expected=expected)
    return Problem(f"doctor-{name}", "doctor", "test", name, "", "f", "", tests=(test,))


def _outside_dir() -> Path:
    """A folder outside every path the sandbox makes private, writable by anyone, so that
    only the sandbox's layers (not file permissions) can keep a program out."""
    for base in (Path.home(), Path.cwd(), Path(tempfile.gettempdir())):
        try:
            path = Path(tempfile.mkdtemp(prefix="sdlib-doctor-", dir=base))
        except OSError:
            continue
        path.chmod(0o777)
        return path
    raise OSError("no writable folder for the self-test")


def processes_with(token: str) -> list[int]:
    """Processes (other than this one) whose command line holds ``token``."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


class SelfTest:
    """The hostile programs, each with the observation that tells whether it got through."""

    def __init__(self, sandbox: Sandbox, outside: Path, token: str):
        self.sandbox = sandbox
        self.outside = outside
        self.token = token
        self.victim = outside / "victim.txt"
        self.victim.write_text("precious")
        self.victim.chmod(0o666)
        self.private = outside / "private.txt"  # stands for the data, the outputs, a home
        self.private.write_text(self.token)
        self.private.chmod(0o644)

    def run(self, name: str, program: str, expected: object = "GOT-THROUGH") -> str:
        verdict = self.sandbox.run(_problem(name, expected), program)
        return verdict.status

    def healthy(self) -> bool:
        return self.run("healthy", "def f():\n    return 'ok'\n", "ok") == "pass"

    def checks(self) -> list[tuple[str, str, Callable[[], tuple[bool, str]]]]:
        return [
            ("write-outside", "create a file outside its job", self.write_outside),
            ("delete-outside", "delete and truncate a file outside its job", self.delete_outside),
            ("read-private", "read a private file (data, outputs, a home)", self.read_private),
            ("secret-env", f"read ${SECRET_VAR} from its environment", self.secret_env),
            ("caller-proc", "read the caller's environment through /proc", self.caller_proc),
            ("loopback", "connect to a TCP server and send UDP on loopback", self.loopback),
            ("kill-parent", "kill its parent, every process it may, and a canary", self.kill),
            ("escape", "leave a setsid double-forked daemon behind", self.escape),
            ("fork-bomb", "fork without end", self.fork_bomb),
            ("memory-bomb", "allocate without end", self.memory_bomb),
            ("output-flood", "print without end", self.output_flood),
            ("always-equal", "return an object equal to everything", self.always_equal),
            ("sysv-shm", "hand data to a later job through SysV shared memory", self.sysv_shm),
            ("keyring", "hand data to a later job through a kernel keyring", self.keyring),
        ]

    def write_outside(self) -> tuple[bool, str]:
        marker = self.outside / "marker.txt"
        self.run("write", f"open({str(marker)!r}, 'w').write('x')\ndef f():\n    return 1\n")
        return not marker.exists(), f"{marker} was created" if marker.exists() else ""

    def delete_outside(self) -> tuple[bool, str]:
        self.run("delete", f"import os\nos.remove({str(self.victim)!r})\n")
        self.run("truncate", f"open({str(self.victim)!r}, 'w').close()\n")
        ok = self.victim.exists() and self.victim.read_text() == "precious"
        return ok, "" if ok else f"{self.victim} was deleted or emptied"

    def read_private(self) -> tuple[bool, str]:
        status = self.run("read", f"def f():\n    return open({str(self.private)!r}).read()\n",
                          self.token)  # fmt: skip
        return status != "pass", "" if status != "pass" else f"{self.private} was read"

    def secret_env(self) -> tuple[bool, str]:
        program = f"import os\ndef f():\n    return os.environ.get({SECRET_VAR!r})\n"
        status = self.run("env", program, self.token)
        return status != "pass", "" if status != "pass" else f"${SECRET_VAR} reached the program"

    def caller_proc(self) -> tuple[bool, str]:
        program = (
            "import os\ndef f():\n    for pid in os.listdir('/proc'):\n        try:\n"
            "            data = open(f'/proc/{pid}/environ', 'rb').read()\n"
            "        except Exception:\n            continue\n"
            f"        if {self.token.encode()!r} in data:\n            return {self.token!r}\n"
        )
        status = self.run("proc", program, self.token)
        return status != "pass", "" if status != "pass" else "a process environment was read"

    def loopback(self) -> tuple[bool, str]:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.setblocking(False)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        tcp_port, udp_port = server.getsockname()[1], udp.getsockname()[1]
        # Raw system calls through ctypes: no missing module can make the check vacuous.
        program = self._libc_program(
            f"tcp = bytes([2, 0, {tcp_port >> 8}, {tcp_port & 0xFF}, 127, 0, 0, 1]) + bytes(8)\n"
            f"udp = bytes([2, 0, {udp_port >> 8}, {udp_port & 0xFF}, 127, 0, 0, 1]) + bytes(8)\n"
            "fd = libc.socket(2, 1, 0)\n"
            "if fd >= 0 and libc.connect(fd, tcp, 16) == 0:\n    libc.write(fd, b'x', 1)\n"
            "fd = libc.socket(2, 2, 0)\n"
            "if fd >= 0:\n    libc.sendto(fd, b'x', 1, 0, udp, 16)\n"
            "def f():\n    return 1\n"
        )
        try:
            self.run("loopback", program)
            time.sleep(0.05)
            got = []
            try:
                server.accept()
                got.append("a TCP connection")
            except BlockingIOError:
                pass
            try:
                udp.recv(16)
                got.append("a UDP datagram")
            except BlockingIOError:
                pass
        finally:
            server.close()
            udp.close()
        return not got, " and ".join(got) + " got through" if got else ""

    def kill(self) -> tuple[bool, str]:
        isolation = self.sandbox.isolation
        if not isolation["contains"].get("processes") and "uid" not in isolation:
            # Nothing scopes the job's signals and it runs as us: kill(-1) would end every
            # process of this user, the doctor and the user's session included.
            return False, "not run: it would kill every process of yours, this one included"
        canary = subprocess.Popen(["sleep", "60"], start_new_session=True)
        try:
            program = (
                "import os, signal\n"
                f"for pid in (os.getppid(), 1, -1, {canary.pid}):\n    try:\n"
                "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
            )
            self.run("kill", program)
            alive = canary.poll() is None
            healthy = self.healthy()
        finally:
            canary.kill()
            canary.wait()
        problems = ([] if alive else ["a process outside the sandbox was killed"]) + (
            [] if healthy else ["the sandbox stopped answering"]
        )
        return not problems, "; ".join(problems)

    def escape(self) -> tuple[bool, str]:
        tok = secrets.token_hex(6)
        program = (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv('/bin/sleep', ['sleep', '30', '{tok}'])\n    os._exit(0)\n"
            "time.sleep(0.2)\ndef f():\n    return 1\n"
        )
        self.run("escape", program)
        time.sleep(0.05)
        left = processes_with(tok)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return not left, f"daemon(s) {left} outlived the job" if left else ""

    def fork_bomb(self) -> tuple[bool, str]:
        program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
        status = self.run("fork", program)
        healthy = self.healthy()
        ok = status != "pass" and healthy
        return ok, "" if ok else f"status {status}, sandbox answering: {healthy}"

    def memory_bomb(self) -> tuple[bool, str]:
        status = self.run("memory", "x = []\nwhile True:\n    x.append(' ' * 10**7)\n")
        return status == "memory", "" if status == "memory" else f"status {status}"

    def output_flood(self) -> tuple[bool, str]:
        used = shutil.disk_usage(self.outside).used
        status = self.run("flood", "while True:\n    print('x' * 10**6)\n")
        grown = shutil.disk_usage(self.outside).used - used
        ok = status != "pass" and grown < 512 << 20
        return ok, "" if ok else f"status {status}, disk grew {grown >> 20} MiB"

    def always_equal(self) -> tuple[bool, str]:
        program = (
            "class E:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
            "    __hash__ = object.__hash__\ndef f():\n    return E()\n"
        )
        status = self.run("equal", program, self.token)
        return status != "pass", "" if status != "pass" else "a wrong answer passed"

    def _libc_program(self, body: str) -> str:
        return "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n" + body

    def sysv_shm(self) -> tuple[bool, str]:
        key = 0x5D1B0000 | (int(self.token[:4], 16))
        writer = self._libc_program(
            f"sid = libc.shmget({key}, 4096, 0o1666)\n"  # IPC_CREAT | 0666
            "if sid >= 0:\n    libc.shmat.restype = ctypes.c_void_p\n"
            "    addr = libc.shmat(sid, None, 0)\n"
            f"    if addr not in (None, ctypes.c_void_p(-1).value):\n"
            f"        ctypes.memmove(addr, {self.token.encode()!r}, {len(self.token)})\n"
        )
        reader = self._libc_program(
            "def f():\n"
            f"    sid = libc.shmget({key}, 0, 0)\n"
            "    if sid < 0:\n        return None\n"
            "    libc.shmat.restype = ctypes.c_void_p\n"
            "    addr = libc.shmat(sid, None, 0)\n"
            f"    return ctypes.string_at(addr, {len(self.token)}).decode()\n"
        )
        self.run("shm-write", writer)
        status = self.run("shm-read", reader, self.token)
        return status != "pass", "" if status != "pass" else "a later job read the segment"

    def keyring(self) -> tuple[bool, str]:
        name = f"sdlib-doctor-{self.token}"
        writer = self._libc_program(
            "libc.syscall.restype = ctypes.c_long\n"
            f"libc.syscall({sandbox_layers._SYSCALLS.get('add_key', -1)}, b'user', "
            f"{name.encode()!r}, {self.token.encode()!r}, {len(self.token)}, -4)\n"  # user keyring
        )
        reader = self._libc_program(
            "libc.syscall.restype = ctypes.c_long\ndef f():\n"
            f"    key = libc.syscall({sandbox_layers._SYSCALLS.get('request_key', -1)}, b'user', "
            f"{name.encode()!r}, None, 0)\n"
            "    if key < 0:\n        return None\n"
            "    buf = ctypes.create_string_buffer(64)\n"
            f"    n = libc.syscall({sandbox_layers._SYSCALLS.get('keyctl', -1)}, 11, key, buf, 64)\n"
            "    return buf.raw[:n].decode() if n > 0 else None\n"
        )
        self.run("key-write", writer)
        status = self.run("key-read", reader, self.token)
        return status != "pass", "" if status != "pass" else "a later job read the key"


def machine_facts() -> dict:
    """What the kernel offers, independent of what a sandbox made of it."""
    facts = {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "user": f"{os.getuid()} ({_user_name()})",
        "landlock_abi": sandbox_layers.landlock_abi(),
        "seccomp_filters": sandbox_layers.seccomp_available() and _seccomp_in_kernel(),
    }
    for name, path in (
        ("max_user_namespaces", "/proc/sys/user/max_user_namespaces"),
        ("unprivileged_userns_clone", "/proc/sys/kernel/unprivileged_userns_clone"),
        ("apparmor_restrict_unprivileged_userns", "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
    ):  # fmt: skip
        try:
            facts[name] = Path(path).read_text().strip()
        except OSError:
            continue
    return facts


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "?"


def _seccomp_in_kernel() -> bool:
    try:
        return "Seccomp:" in Path("/proc/self/status").read_text()
    except OSError:
        return False


def run_doctor(isolation: str = "auto") -> dict:
    """Everything ``sdlib doctor`` prints, as data (the tests run it in each environment)."""
    os.environ[SECRET_VAR] = secrets.token_hex(8)
    report: dict = {"machine": machine_facts(), "isolation_asked": isolation}
    outside = _outside_dir()
    try:
        config = SandboxConfig(
            timeout=3, memory_mb=512, tmpfs_mb=64, workers=1, isolation=isolation
        )
        try:
            sandbox = Sandbox(config)
        except SandboxUnavailable as exc:
            report["error"] = str(exc)
            report["checks"] = []
            return report
        with sandbox:
            iso = sandbox.isolation
            report["isolation"] = {k: iso.get(k) for k in ("mode", "layers", "contains", "missing",
                                                          "why_not_namespaces", "why_not_landlock",
                                                          "why_not_seccomp", "warnings", "exposed")}  # fmt: skip
            test = SelfTest(sandbox, outside, os.environ[SECRET_VAR])
            checks = []
            for name, what, check in test.checks():
                try:
                    contained, detail = check()
                except Exception as exc:  # noqa: BLE001 - a broken check is not a pass
                    contained, detail = False, f"the check itself failed: {exc!r}"
                checks.append(Check(name, what, contained, detail))
            report["checks"] = [c.__dict__ for c in checks]
    finally:
        shutil.rmtree(outside, ignore_errors=True)
    report["ok"] = bool(report["checks"]) and all(c["contained"] for c in report["checks"])
    return report


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"kernel       {m['kernel']} ({m['machine']})")
    print(f"user         {m['user']}")
    print(f"landlock     ABI {m['landlock_abi']}" if m["landlock_abi"] else "landlock     none")
    print(f"seccomp      {'filters available' if m['seccomp_filters'] else 'none'}")
    for key in ("max_user_namespaces", "unprivileged_userns_clone",
                "apparmor_restrict_unprivileged_userns"):  # fmt: skip
        if key in m:
            print(f"{key:<12} {m[key]}")
    if "error" in report:
        print(f"\nthe sandbox did not start: {report['error']}")
        return
    iso = report["isolation"]
    print(f"\nsandbox mode {iso['mode']} (isolation={report['isolation_asked']!r})")
    print(f"layers       {', '.join(iso['layers'])}")
    for name in ("why_not_namespaces", "why_not_landlock", "why_not_seccomp"):
        if iso.get(name):
            print(f"{name.replace('why_not_', 'no '):<12} {iso[name]}")
    for name in GUARANTEES:
        by = iso["contains"].get(name)
        print(
            f"{name:<12} {'contained by ' + by if by else 'NOT CONTAINED: ' + iso['missing'][name]}"
        )
    for text in iso.get("warnings") or []:
        print(f"warning      {text}")
    print("\nself-test (hostile programs through the real sandbox):")
    for check in report["checks"]:
        mark = "contained   " if check["contained"] else "GOT THROUGH "
        print(f"  {mark} {check['name']:<15} {check['what']}"
              + (f": {check['detail']}" if check["detail"] else ""))  # fmt: skip
    failed = [c["name"] for c in report["checks"] if not c["contained"]]
    print("\n" + (f"{len(failed)} got through: {', '.join(failed)}" if failed
                  else f"all {len(report['checks'])} contained"))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdlib doctor", description=__doc__)
    parser.add_argument("--isolation", choices=ISOLATION_LEVELS, default="auto")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = run_doctor(args.isolation)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
