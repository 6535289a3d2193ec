"""The command's side of the warm process (``flows.warm``): whether a ``knobflow`` command may
run in the home's warm process, and sending it there. Only the standard library and knobflow's
settings are imported here: the console script calls ``delegate`` before anything heavy loads.

A command runs warm when nothing would make it differ from a cold one: it is ``tune`` (not its
``--help``), ``KNOBFLOW_NO_WARM`` is unset, the home has a warm process owned by this user, and
the settings read at import time (the environment's ``PREFECT_*``, ``MLFLOW_*``, ``KNOBFLOW_*``,
``PYTHON*``, ... and the Python executable), knobflow's code (each module's size and mtime) and
the installed libraries (each one's version and install time) are those the warm process loaded.
Otherwise the command runs in its own process as before; when the warm process refused it, one
line on stderr says why.

The request is one ``SOCK_SEQPACKET`` message (JSON: the arguments, working directory,
environment, umask, the command's start time, the code's fingerprint) carrying the command's
standard input, output and error as file descriptors. The answers: ``{"pid"}`` (the job started)
or ``{"refused"}``, then ``{"exit"}``. The command sends ``{"signal"}`` for each SIGINT, SIGTERM
or SIGHUP it gets; its socket closing (even by SIGKILL) stops the job as SIGTERM would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

__all__ = ["SOCKET_NAME", "code_fingerprint", "delegate", "import_time_environment",
           "peer_uid", "socket_path"]

SOCKET_NAME = "warm.sock"
#: A Unix socket's path must fit in sun_path (108 bytes with its terminating NUL).
MAX_SOCKET_PATH = 100
#: Environment that Prefect, MLflow, Python and knobflow read when imported: a command whose
#: values differ from the warm process's runs cold.
_IMPORT_TIME_PREFIXES = ("PREFECT_", "MLFLOW_", "KNOBFLOW_", "PYTHON", "GX_", "GE_", "OPTUNA_",
                         "XDG_", "OMP_", "MKL_", "OPENBLAS_", "LIGHTGBM_")
_IMPORT_TIME_NAMES = ("HOME", "VIRTUAL_ENV", "TZ")
#: Set per command (``tune --verbose``), what picks the home (and so the warm process) or what
#: chooses cold: not compared.
_PER_COMMAND = ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "KNOBFLOW_HOME", "KNOBFLOW_NO_WARM")
PACKAGES = ("flows", "tasks", "tuners", "rules", "model_registry", "targets")
_REPO = Path(__file__).resolve().parent.parent


# -- what both sides compare -----------------------------------------------------------------------
def socket_path(home: Path) -> Path:
    return home / SOCKET_NAME


def import_time_environment(env: dict[str, str]) -> dict[str, str]:
    """The part of ``env`` read when modules are imported (``_IMPORT_TIME_PREFIXES``)."""
    return {k: v for k, v in env.items()
            if (k.startswith(_IMPORT_TIME_PREFIXES) or k in _IMPORT_TIME_NAMES)
            and k not in _PER_COMMAND}


def code_fingerprint(root: Path = _REPO, sites: list[Path] | None = None) -> str:
    """A digest of knobflow's modules as they are on disk (each one's path, size and mtime),
    of the libraries installed beside it (each ``*.dist-info``/``*.egg-info`` of ``sites``,
    by default the interpreter's site-packages: its name holds the version, its mtime the
    install) and of the Python that runs them: it changes when the code is edited or
    reinstalled, or a library is installed, upgraded or removed."""
    digest = hashlib.sha256(os.path.realpath(sys.executable).encode())
    stack = [root / p for p in PACKAGES]
    while stack:
        folder = stack.pop()
        with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    stack.append(Path(entry.path))
                elif entry.name.endswith(".py"):
                    st = entry.stat()
                    digest.update(f"{entry.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for site_dir in _site_dirs() if sites is None else sites:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), \
                os.scandir(site_dir) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.endswith((".dist-info", ".egg-info")):
                    with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                        digest.update(f"{entry.path}\0{entry.stat().st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _site_dirs() -> list[Path]:
    """The folders this interpreter installs libraries into (each once)."""
    import site

    found = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE
                                        else [])]
    return [Path(p) for p in dict.fromkeys(os.path.realpath(p) for p in found)]


def _home_of(words: list[str]) -> Path | None:
    """The knobflow home a ``tune`` command line names (``--home DIR``, ``--home=DIR``, else
    the environment's or the default), or None when the settings cannot be read (the cold
    command then says what is wrong)."""
    from targets.common.settings import knobflow_home

    given = None
    for i, word in enumerate(words):
        if word == "--":
            break
        if word == "--home" and i + 1 < len(words):
            given = words[i + 1]
        elif word.startswith("--home="):
            given = word.split("=", 1)[1]
    try:
        return knobflow_home(given)
    except Exception:  # a bad settings file: the cold command reports it
        return None


# -- the command's side ----------------------------------------------------------------------------
def delegate(words: list[str], started: float) -> int | None:
    """Run ``knobflow WORDS`` in the home's warm process, if one runs and may: the command's
    exit code; None to run it here (no warm process, another command, or the warm process
    refused: then one line on stderr says why)."""
    if words[:1] != ["tune"] or os.environ.get("KNOBFLOW_NO_WARM") or \
            any(w in ("--help", "-h") for w in words):
        return None
    home = _home_of(words[1:])
    if home is None:
        return None
    path = socket_path(home)
    if not path.exists() or len(str(path)) > MAX_SOCKET_PATH:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.settimeout(10.0)
        conn.connect(str(path))
        if peer_uid(conn) != os.getuid():
            _say(f"the warm process at {path} is not this user's; running here")
            conn.close()
            return None
        from targets.common.settings import quiet_environment

        quiet_environment()  # as the warm process did, so the two environments compare
        request = {"argv": words, "cwd": os.getcwd(), "env": dict(os.environ),
                   "umask": _umask(), "started": started, "code": code_fingerprint()}
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
        reply = json.loads(conn.recv(65536) or b"{}")
    except (OSError, ValueError):  # none answers (a stale socket), or it went away: run here
        conn.close()
        return None
    if "pid" not in reply:
        if reply.get("refused"):
            _say(f"{reply['refused']}; running here")
        conn.close()
        return None
    return _follow(conn)


def _follow(conn: socket.socket) -> int:
    """Wait for the job's exit code, passing on the signals that should reach it."""
    conn.settimeout(None)

    def forward(signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):
            conn.send(json.dumps({"signal": signum}).encode())

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            message = conn.recv(65536)
        except InterruptedError:
            continue
        except OSError:
            message = b""
        if not message:
            _say("the job's process ended without an exit code (killed?); its state is in the "
                 "home: `knobflow tune ... --resume` continues it")
            return 1
        reply = json.loads(message)
        if "exit" in reply:
            return int(reply["exit"])


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]  # struct ucred: pid, uid, gid


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _say(text: str) -> None:
    print(f"knobflow: warm process: {text}", file=sys.stderr, flush=True)
