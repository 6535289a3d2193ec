"""Live-instance records in the home: passwords split off and kept 0600, records read back or
refused with the file and field, the canary order, and a lock that a SIGKILLed holder never
leaves behind."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from targets.common.errors import KnobflowError
from tasks.instances import (
    DEFAULT_POLICY,
    Instance,
    InstanceStore,
    instance_lock,
    lock_holder,
    redact,
    split_secret,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr%40t-pw"  # percent-encoded '@' in the URL
PLAIN = "s3cr@t-pw"


@pytest.mark.parametrize(("url", "clean", "password"), [
    ("postgresql://knob:s3cr%40t-pw@127.0.0.1:5432/app", "postgresql://knob@127.0.0.1:5432/app",
     PLAIN),
    ("postgres://knob@db.example:5433/app?sslmode=disable&password=p%26w",
     "postgres://knob@db.example:5433/app?sslmode=disable", "p&w"),
    ("postgresql://knob:pw@[::1]:5432/app", "postgresql://knob@[::1]:5432/app", "pw"),
    ("redis://:pw@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", "pw"),
    ("redis://default:pw@cache", "redis://default@cache", "pw"),
    ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379", None),
    ("unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock", None),
])
def test_split_secret(url: str, clean: str, password: str | None) -> None:
    assert split_secret(url) == (clean, password)


def test_an_unknown_scheme_is_refused_with_the_known_ones() -> None:
    with pytest.raises(KnobflowError) as caught:
        split_secret("mysql://root:hunter2@127.0.0.1/app")
    assert str(caught.value) == ("connection URL: unknown scheme 'mysql'; known: postgresql, "
                                 "postgres, redis, rediss, unix, synthetic")
    with pytest.raises(KnobflowError) as caught:
        split_secret("redi://:hunter2@h")
    assert str(caught.value).startswith("connection URL: unknown scheme 'redi' (did you mean "
                                        "'redis'?)")
    assert "hunter2" not in str(caught.value)


def test_redact_hides_passwords_in_a_command() -> None:
    assert redact("knobflow instance add a --connect postgresql://u:pw@h/db") == (
        "knobflow instance add a --connect postgresql://u:***@h/db")
    assert redact("redis://:pw@h:1/0?password=zz&db=1") == "redis://:***@h:1/0?password=***&db=1"


@pytest.mark.parametrize("name", ["", "Prod", "-a", "a/b", "a" * 64, "..", "é"])
def test_bad_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(KnobflowError) as caught:
        Instance(name=name, service="s", target="redis", url="redis://h")
    assert str(caught.value) == (
        f"bad instance name {name!r}: an instance name is 1-63 characters: lower-case letters, "
        "digits, '.', '_' or '-', starting with a letter or digit")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_add_keeps_the_password_in_a_private_file_only(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    url, password = split_secret(f"postgresql://knob:{SECRET}@127.0.0.1:5432/app")
    added = store.add(Instance(name="pg-1", service="orders", target="postgres", url=url,
                               restart_command="systemctl restart pg"), password=password)
    directory = tmp_path / "instances" / "pg-1"
    assert added.secret_file == directory / "secret"
    assert (directory / "secret").read_text() == PLAIN
    assert _mode(directory) == 0o700
    assert _mode(directory / "secret") == 0o600
    assert _mode(directory / "instance.json") == 0o600
    for path in tmp_path.rglob("*"):  # the password is in the secret file and nowhere else
        if path.is_file() and path.name != "secret":
            assert PLAIN not in path.read_text() and SECRET not in path.read_text(), path
    back = store.get("pg-1")
    assert back == added
    assert back.policy == DEFAULT_POLICY
    assert json.loads((directory / "instance.json").read_text())["url"] == (
        "postgresql://knob@127.0.0.1:5432/app")


def test_a_url_with_a_password_never_reaches_the_record(tmp_path: Path) -> None:
    with pytest.raises(KnobflowError) as caught:
        Instance(name="r", service="s", target="redis", url="redis://:hunter2@h")
    assert "hunter2" not in str(caught.value)
    assert str(caught.value) == ("instance r: the URL holds a password; it is kept in the "
                                 "instance's secret file, never in its record")


def test_store_add_get_list_update_remove(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    assert store.list() == []
    store.add(Instance(name="cache-b", service="cache", target="redis", url="redis://h:2"))
    store.add(Instance(name="cache-a", service="cache", target="redis", url="redis://h:1",
                       policy={"windows": 3}))
    assert [i.name for i in store.list()] == ["cache-a", "cache-b"]
    with pytest.raises(KnobflowError) as caught:
        store.add(Instance(name="cache-a", service="cache", target="redis", url="redis://h:9"))
    assert str(caught.value) == ("instance cache-a exists already; remove it first (`knobflow "
                                 "instance remove cache-a`) or pick another name")
    with pytest.raises(KnobflowError) as caught:
        store.get("cache-a1")
    assert str(caught.value) == ("no instance 'cache-a1' (did you mean 'cache-a'?); see "
                                 "`knobflow instance list`")
    a = store.get("cache-a")
    assert a.policy == {**DEFAULT_POLICY, "windows": 3}
    store.update(Instance(**{**a.__dict__, "workload": {"read_ratio": 0.9}}))
    assert store.get("cache-a").workload == {"read_ratio": 0.9}
    store.remove("cache-b")
    assert [i.name for i in store.list()] == ["cache-a"]
    assert not (tmp_path / "instances" / "cache-b").exists()
    with pytest.raises(KnobflowError, match="no instance 'cache-b'"):
        store.remove("cache-b")


def test_of_service_gives_the_canary_order(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    for name, created in [("r3", "2026-01-02T00:00:00"), ("r2", "2026-01-01T00:00:00"),
                          ("r1", "2026-01-02T00:00:00"), ("other", "2025-01-01T00:00:00")]:
        store.add(Instance(name=name, service="other" if name == "other" else "cache",
                           target="redis", url="redis://h", created=created))
    assert [i.name for i in store.of_service("cache")] == ["r2", "r1", "r3"]


@pytest.mark.parametrize(("change", "message"), [
    ({"url": 6379}, "field 'url' must be str"),
    ({"launched": "yes"}, "field 'launched' must be bool"),
    ({"policy": {"windows": 1}}, "policy 'windows' must be an integer >= 2"),
    ({"policy": {"alpha": 0.9}}, "policy 'alpha' must be a number in (0.0, 0.5)"),
    ({"policy": {"window": 5}}, "policy: unknown key 'window' (did you mean 'windows'?)"),
    ({"colour": "red"}, "unknown field 'colour'"),
])
def test_a_bad_record_names_the_file_and_field(tmp_path: Path, change: dict,
                                                message: str) -> None:
    store = InstanceStore(tmp_path)
    store.add(Instance(name="r", service="s", target="redis", url="redis://h"))
    path = tmp_path / "instances" / "r" / "instance.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(KnobflowError) as caught:
        store.get("r")
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    path.write_text('{"name": "r", ')
    with pytest.raises(KnobflowError, match=r"instance\.json: not a readable instance record"):
        store.get("r")


def test_connection_without_the_password(tmp_path: Path) -> None:
    pytest.importorskip("targets.live", reason="targets/live.py (the lead's) is not merged yet")
    store = InstanceStore(tmp_path)
    url, password = split_secret("redis://:pw@127.0.0.1:6379/0")
    instance = store.add(Instance(name="r", service="s", target="redis", url=url,
                                  restart_command="true"), password=password)
    connection = instance.connection()
    assert (connection.target, connection.url, connection.secret_file,
            connection.restart_command) == ("redis", "redis://127.0.0.1:6379/0",
                                            tmp_path / "instances" / "r" / "secret", "true")


HOLD = textwrap.dedent("""
    import subprocess, sys, time
    from tasks.instances import InstanceStore, instance_lock
    with instance_lock(InstanceStore(sys.argv[1]), "r",
                       command="knobflow apply r --connect redis://:hunter2@h"):
        child = subprocess.Popen(["sleep", "60"], start_new_session=True)  # outlives us
        print("locked", child.pid, flush=True)
        time.sleep(60)
""")


def test_a_busy_instance_is_refused_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    store.add(Instance(name="r", service="s", target="redis", url="redis://h"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    child = ""
    try:
        assert holder.stdout is not None
        said, child = holder.stdout.readline().split()
        assert said == "locked"
        assert lock_holder(store, "r")["pid"] == holder.pid
        with pytest.raises(KnobflowError) as caught, instance_lock(store, "r"):
            pass
        assert str(caught.value) == (
            f"instance r is busy: knobflow (pid {holder.pid}, `knobflow apply r --connect "
            "redis://:***@h`) is acting on it; wait for it or end it")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        assert Path(f"/proc/{child}").exists()  # a process it started does not keep the lock
        assert lock_holder(store, "r") is None
        with instance_lock(store, "r", command="knobflow history r"):
            assert lock_holder(store, "r")["command"] == "knobflow history r"
            with pytest.raises(KnobflowError, match=f"pid {os.getpid()}, `knobflow history r`"), \
                    instance_lock(store, "r"):
                pass
        assert lock_holder(store, "r") is None
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if child:
            os.kill(int(child), signal.SIGKILL)


def test_a_launched_instance_round_trips(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    launched = Instance(name="demo", service="cache", target="redis",
                        url="unix:///tmp/demo/redis.sock", launched=True,
                        data_dir=tmp_path / "demo", workload={"read_ratio": 0.5, "keys": 1000},
                        policy={"max_knobs": 2, "window_s": 2})
    store.add(launched)
    back = store.get("demo")
    assert back == launched and back.data_dir == tmp_path / "demo"
    assert back.policy["window_s"] == 2.0 and back.policy["max_knobs"] == 2
    doc = json.loads((tmp_path / "instances" / "demo" / "instance.json").read_text())
    assert doc["data_dir"] == str(tmp_path / "demo") and doc["secret_file"] is None
    assert not (tmp_path / "instances" / "demo" / "secret").exists()
