"""The sandbox modes: how one program is started in each, and whether a host can run it.

- `bwrap`: Debian's bubblewrap. A fresh user, PID, network, IPC, UTS and mount namespace; a
  read-only root holding only /usr (and its /bin, /lib links), the interpreter's prefix when that
  is elsewhere, /proc, a minimal /dev, and two small in-memory writable folders: /work (the
  working directory) and /tmp.
- `unshare`: the same namespaces and the same file system, built with util-linux alone (unshare,
  mount, pivot_root, setpriv) by a short shell script (UNSHARE_SCRIPT) for hosts without bwrap.
- `rlimits-only`: no namespaces. A new session, a clean environment, a fresh temporary folder
  and the rlimits. The weaker mode: it must be asked for by name.

In every mode the launcher (launch.py) sets the rlimits and runs the program as `python -I main.py`.
When mixkit runs as root, the sandbox runs as `nobody` (uid 65534): root would not be held to the
process limit (RLIMIT_NPROC), and owns every file it could reach.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mixkit.errors import MixkitError
from mixkit.sandbox.result import Limits

MODES = ("auto", "bwrap", "unshare", "rlimits-only")
GUARANTEED = ("bwrap", "unshare")  # the modes `auto` may choose, best first
NOBODY = 65534
SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
LAUNCHER = (Path(__file__).parent / "launch.py").read_text("utf-8")
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # merged /usr: links into it

FIX = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap), or enable unprivileged user "
    "namespaces (sysctl user.max_user_namespaces=15000, and kernel.unprivileged_userns_clone=1 "
    "where that exists; kernel.apparmor_restrict_unprivileged_userns=0 where AppArmor restricts "
    "them, as on Ubuntu 23.10 and later), or opt in to the weaker mode by name: "
    "Sandbox(mode='rlimits-only') "
    "(limits and a clean environment only: no network or file-system isolation)"
)


class SandboxUnavailable(MixkitError):
    """No sandbox of the requested mode works on this host; the message says what is missing."""


@dataclass(frozen=True)
class Launch:
    """The argv, environment and working folder (rlimits-only) of one sandboxed program, and the
    user it runs as: `nobody` when we are root, else unchanged (None). Start it in a new session."""

    mode: str
    argv: list[str]
    env: dict[str, str]
    cwd: str = "/"
    user: int | None = field(default_factory=lambda: NOBODY if os.geteuid() == 0 else None)

    @property
    def extra_groups(self) -> list[int] | None:
        return [] if self.user is not None else None


def interpreter(python: str | None = None) -> tuple[str, list[str]]:
    """The interpreter programs run with, and the folders it needs bound beside /usr.

    Debian's /usr/bin/python3 first (it needs only /usr); else this Python's own prefix, bound
    read-only by itself (never the home folder it may live in)."""
    debian = os.path.realpath("/usr/bin/python3")  # not an /etc/alternatives link: no /etc inside
    if python is None and os.path.exists(debian) and debian.startswith("/usr/"):
        return debian, []
    path = os.path.realpath(python or sys.executable)
    prefix = os.path.dirname(os.path.dirname(path))
    if python is None:
        prefix = os.path.realpath(sys.base_prefix)
    if prefix.startswith("/usr/") or prefix == "/usr":
        return path, []
    private = [Path.home(), Path(os.environ.get("MIXKIT_HOME") or Path.home() / ".mixkit")]
    for folder in map(os.path.realpath, private):
        if prefix == "/" or folder == prefix or folder.startswith(prefix + "/"):
            raise SandboxUnavailable(
                f"the interpreter {path} lives in {prefix}, which holds {folder}; install python3 "
                "under /usr (apt-get install python3) or pass Sandbox(python=...)"
            )
    if os.geteuid() == 0 and (closed := closed_to_others(prefix)):
        raise SandboxUnavailable(
            f"the interpreter {path} lies under {closed}, which the sandbox user nobody (as root, "
            "mixkit runs programs as nobody) cannot enter; install python3 under /usr "
            "(apt-get install python3) or pass Sandbox(python=...)"
        )
    return path, [prefix]


def closed_to_others(path: str) -> str:
    """The first folder above `path` (or itself) that other users cannot enter, else ""."""
    for folder in [*reversed(Path(path).parents), Path(path)]:
        if not os.stat(folder).st_mode & 0o001:
            return str(folder)
    return ""


def launcher_args(python: str, limits: Limits) -> list[str]:
    """`python -I -S -c LAUNCHER CONFIG`: the command every mode ends with."""
    config = json.dumps({"rlimits": limits.rlimits()})
    return [python, "-I", "-S", "-c", LAUNCHER, config]


def _root_links() -> list[tuple[str, str]]:
    """(name, target) of /bin, /lib... : ('bin', 'usr/bin') for a link, ('bin', '') for a folder."""
    found = []
    for name in ROOT_LINKS:
        path = Path("/") / name
        if path.is_symlink():
            found.append((name, os.readlink(path)))
        elif path.is_dir():
            found.append((name, ""))
    return found


def bwrap_argv(
    bwrap: str, python: str, binds: list[str], limits: Limits, info_fd: int = -1
) -> list[str]:
    size = str(limits.file_mb << 20)
    argv = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    if info_fd >= 0:  # bwrap writes the init's PID there (tree.InitPid)
        argv += ["--info-fd", str(info_fd)]
    argv += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if "--disable-userns" in _help(bwrap):  # bwrap >= 0.8: no user namespaces inside
        argv += ["--disable-userns"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name, target in _root_links():
        argv += (
            ["--symlink", target, f"/{name}"] if target else ["--ro-bind", f"/{name}", f"/{name}"]
        )
    for path in binds:
        argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    argv += ["--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", "/work"]
    argv += ["--chdir", "/work", "--remount-ro", "/", "--clearenv"]
    for key, value in _inside_env().items():
        argv += ["--setenv", key, value]
    return [*argv, "--", *launcher_args(python, limits)]


# Runs as root of a fresh user namespace (with its capabilities there, none outside) and as PID 1
# of a fresh PID namespace: it builds the sandbox's root in a tmpfs, pivots into it, drops the old
# root, makes / read-only, then runs the launcher with no capabilities (setpriv). It stays PID 1,
# so the program cannot kill it, and when it exits the kernel kills everything left in the namespace.
UNSHARE_SCRIPT = r"""
set -eu
size=$1; shift; links=$1; shift
mount -t tmpfs -o mode=755,size=1m mixkit-sandbox /tmp
cd /tmp
mkdir usr proc dev tmp work
mount --rbind /usr usr; mount -o remount,bind,ro,nosuid,nodev usr
for entry in $links; do
  name=${entry%%=*}; target=${entry#*=}
  if [ -n "$target" ]; then ln -s "$target" "$name"
  else mkdir "$name"; mount --rbind "/$name" "$name"; mount -o remount,bind,ro,nosuid,nodev "$name"; fi
done
for node in null zero full random urandom; do
  touch "dev/$node"; mount --bind "/dev/$node" "dev/$node"
done
ln -s /proc/self/fd dev/fd; ln -s /proc/self/fd/0 dev/stdin
ln -s /proc/self/fd/1 dev/stdout; ln -s /proc/self/fd/2 dev/stderr
mount -t tmpfs -o "size=$size,mode=1777,nosuid,nodev" tmpfs tmp
mount -t tmpfs -o "size=$size,mode=777,nosuid,nodev" tmpfs work
mount -t proc -o nosuid,nodev,noexec proc proc
echo 0 2>/dev/null >proc/sys/user/max_user_namespaces || true  # no user namespaces inside
while [ "$1" != "--" ]; do
  mkdir -p ".$1"; mount --rbind "$1" ".$1"; mount -o remount,bind,ro,nosuid,nodev ".$1"; shift
done
shift
mkdir old; mount -o remount,bind,ro,nosuid,nodev /tmp
pivot_root . old; cd /; umount -l /old
hostname sandbox 2>/dev/null || true
cd /work
setpriv --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"
"""


def unshare_argv(unshare: str, python: str, binds: list[str], limits: Limits) -> list[str]:
    argv = [unshare, "--user", "--map-root-user", "--mount", "--net", "--pid", "--ipc", "--uts"]
    argv += ["--fork", "--kill-child", "--propagation", "private"]
    links = " ".join(f"{name}={target}" for name, target in _root_links())
    argv += ["/bin/sh", "-c", UNSHARE_SCRIPT, "sh", str(limits.file_mb << 20), links, *binds, "--"]
    env = [f"{key}={value}" for key, value in _inside_env().items()]
    return [*argv, "env", "-i", *env, *launcher_args(python, limits)]


def _inside_env() -> dict[str, str]:
    return {**SANDBOX_ENV, "HOME": "/tmp", "TMPDIR": "/tmp"}


def launch(
    mode: str, python: str, binds: list[str], limits: Limits, workdir: str = "", info_fd: int = -1
) -> Launch:
    """How to start one program in `mode` (a concrete mode, not "auto"); `info_fd`: see bwrap_argv."""
    env = {**SANDBOX_ENV, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    if mode == "bwrap":
        return Launch(mode, bwrap_argv(_tool("bwrap"), python, binds, limits, info_fd), env)
    if mode == "unshare":
        return Launch(mode, unshare_argv(_tool("unshare"), python, binds, limits), env)
    home = {"HOME": workdir, "TMPDIR": workdir}
    return Launch(mode, launcher_args(python, limits), {**SANDBOX_ENV, **home}, cwd=workdir)


@functools.lru_cache(maxsize=8)
def _help(tool: str) -> str:
    """`tool --help`, to see which options this version has."""
    try:
        done = subprocess.run([tool, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + done.stderr


def _tool(name: str) -> str:
    path = _which(name)
    if path is None:
        raise SandboxUnavailable(f"mode '{name}': `{name}` is not on PATH; {FIX}")
    return path


def missing_tools(mode: str) -> list[str]:
    """The commands `mode` needs that are not on PATH."""
    needs = {"bwrap": ["bwrap"], "unshare": ["unshare", "mount", "pivot_root", "setpriv"]}
    return [tool for tool in needs.get(mode, []) if _which(tool) is None]


def _which(tool: str) -> str | None:
    """`tool` on PATH, or in /usr/sbin and /sbin (pivot_root's home, off most users' PATH)."""
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def probe(mode: str, python: str, binds: list[str]) -> str:
    """Run `print(6 * 7)` in `mode`; "" when it works, else why not (what is missing)."""
    if mode == "rlimits-only" and os.name != "posix":
        return "rlimits-only needs a POSIX system (resource limits, sessions)"
    if missing := missing_tools(mode):
        return f"{', '.join(missing)} not on PATH"
    workdir = ""
    if mode == "rlimits-only":
        workdir = make_workdir(None)
    try:
        how = launch(mode, python, binds, Limits(wall_s=20, cpu_s=5, procs=16), workdir)
        done = subprocess.run(
            how.argv, input=b"print(6 * 7)\n", capture_output=True, timeout=30, env=how.env,
            cwd=how.cwd, start_new_session=True, user=how.user, group=how.user,
            extra_groups=how.extra_groups,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return f"could not start it: {e}"
    finally:
        if workdir:
            remove_tree(workdir)
    if done.returncode == 0 and done.stdout.strip() == b"42":
        return ""
    err = done.stderr.decode(errors="replace").strip().splitlines()
    return f"the test program failed (exit {done.returncode}): {' / '.join(err[-3:])}"


def make_workdir(parent: str | None) -> str:
    """A fresh private folder for an rlimits-only program (owned by `nobody` when we are root)."""
    path = tempfile.mkdtemp(prefix="mixkit-sandbox-", dir=parent)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
        if closed := closed_to_others(os.path.dirname(path)):
            os.rmdir(path)
            raise SandboxUnavailable(
                f"rlimits-only: the sandbox user nobody cannot enter {closed} (to reach its "
                f"working folder under {parent}); give Sandbox a tmp_dir every user can traverse, "
                "such as /tmp"
            )
    return path


def remove_tree(path: str) -> None:
    """Remove a working folder, whatever permissions the program left on what it made. (Root
    needs no permissions, and does not chmod: a process left behind could swap a folder for a
    link to one of the host's between the check and the chmod.)"""
    if os.geteuid() == 0:
        shutil.rmtree(path, ignore_errors=True)  # fd-based on Linux: links are not followed
        return
    for folder, subfolders, _ in os.walk(path):
        for name in [folder, *(os.path.join(folder, sub) for sub in subfolders)]:
            if not os.path.islink(name):
                try:
                    os.chmod(name, 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)
