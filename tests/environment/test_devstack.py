"""The dev-services library's pure parts: broker and server configs, version checks, ports,
the stack's saved state and the rule for which tests run alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recorder.devstack import kafka, postgres, procs, services
from recorder.devstack.stack import kafka as stack_kafka
from recorder.devstack.stack import s3 as stack_s3
from recorder.devstack.stack.state import ServiceState


def test_broker_properties_stay_on_loopback_and_take_overrides() -> None:
    props = kafka.broker_properties(Path("/d"), 9092, 9093, num_partitions="6")
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["num.partitions"] == "6"
    assert props["log.dirs"] == "/d"


def test_the_stack_and_the_demo_run_one_broker_config_in_two_profiles() -> None:
    """One base config: the test profile changes only what it names, the demo none of it."""
    base = kafka.broker_properties(Path("/d"), 1, 2)
    tests = kafka.broker_properties(Path("/d"), 1, 2, **stack_kafka.TEST_PROFILE)
    assert services.kafka_properties(Path("/d"), 1, 2) == base
    changed = {k for k in tests if tests.get(k) != base.get(k)}
    assert changed == {k.replace("_", ".") for k in stack_kafka.TEST_PROFILE}
    assert tests["broker.session.timeout.ms"] == "3000"


@pytest.mark.parametrize(
    ("output", "ok"),
    [
        ('openjdk version "17.0.2" 2022-01-18', True),
        ('openjdk version "21" 2023-09-19', True),
        ('java version "1.8.0_292"', False),
        ('openjdk version "11.0.1"', False),
        ("garbage", False),
    ],
)
def test_java_version_check(output: str, ok: bool) -> None:
    if ok:
        assert kafka.check_java_version("/j", output) == "/j"
    else:
        with pytest.raises(procs.ServiceError, match="needs 17"):
            kafka.check_java_version("/j", output)


def test_cluster_ids_never_look_like_flags() -> None:
    ids = {kafka.cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_server_settings_are_throwaway_and_quoted_in_conf() -> None:
    settings = postgres.server_settings(5555, "", 50, {"jit": "off"})
    assert settings["port"] == "5555" and settings["fsync"] == "off"
    assert settings["unix_socket_directories"] == "" and settings["jit"] == "off"
    conf = postgres.conf_lines({"port": "5555", "log_line_prefix": "%m [%p] "})
    assert conf == "port = '5555'\nlog_line_prefix = '%m [%p] '\n"


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    lo, _ = procs.ephemeral_range()
    ports = procs.free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        assert procs.port_is_free(port)
        if lo > 12000:
            assert port < lo
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))
        assert not procs.port_is_free(ports[0])


def test_a_spawned_child_is_stopped_with_its_group(tmp_path: Path) -> None:
    child = procs.spawn_child(
        "sleeper",
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        tmp_path / "log",
    )
    assert child.alive()
    assert os.getpgid(child.pid) == child.pid  # its own session: Ctrl-C does not reach it
    assert child.stop(signal.SIGTERM, timeout=10) == -signal.SIGTERM
    assert not procs.pid_alive(child.pid)


def test_terminate_ends_a_detached_process(tmp_path: Path) -> None:
    proc = procs.spawn([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log")
    procs.terminate(proc.pid, timeout=10)
    assert not procs.pid_alive(proc.pid)  # ended and reaped (terminate reaps its own child)


def test_state_pid_is_ours_only_when_the_command_line_matches(tmp_path: Path) -> None:
    # A process some earlier `scripts/stack` started (not procs.spawn's: this one's are known
    # by their Popen). Its "up" says its exec is done: right after Popen returns, its command
    # line may still be empty (the window test_spawn_returns_with_the_command_line_in_place is
    # about), and this test failed about one run in five when it looked at once.
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        st = ServiceState("x", {"pid": proc.pid})
        assert st.pid("pid", "time.sleep") == proc.pid
        assert st.pid("pid", "kafka.Kafka") is None  # a reused pid is someone else's
        with pytest.raises(procs.ServiceError, match="state has no port"):
            st.get_int("port")
    finally:
        proc.kill()
        proc.wait()


def test_spawn_returns_with_the_command_line_in_place(tmp_path: Path) -> None:
    """`scripts/stack` recognises its servers by their command line; a server spawned a moment
    ago must already be recognised (it was called dead while booting: "exited while starting")."""
    marker = "spawn-window-marker"
    for i in range(20):
        argv = [sys.executable, "-c", "import time; time.sleep(60)", marker]
        proc = procs.spawn(argv, tmp_path / "log")
        try:
            assert marker in procs.cmdline(proc.pid), f"spawn {i}: command line not in place yet"
            assert ServiceState("x", {"pid": proc.pid}).pid("pid", marker) == proc.pid
        finally:
            procs.terminate(proc.pid, timeout=10, kill=True)


def test_an_own_child_that_ended_is_not_running_and_says_how(tmp_path: Path) -> None:
    proc = procs.spawn([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log")
    proc.wait()
    assert not procs.runs(proc.pid, "python")
    assert procs.exit_status(proc.pid) == 3
    assert procs.describe_exit(3) == "exit status 3"
    assert procs.describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert "unknown" in procs.describe_exit(None)


def test_last_words_pick_the_line_that_states_the_error(tmp_path: Path) -> None:
    node = tmp_path / "bridge.log"
    node.write_text(
        "node:events:502\n      throw er; // Unhandled 'error' event\n      ^\n\n"
        "Error: listen EADDRINUSE: address already in use 127.0.0.1:4242\n"
        "    at Server.setupListenHandle [as _listen2] (node:net:1908:16)\n"
        "Emitted 'error' event on Server instance at:\n  code: 'EADDRINUSE',\n}\n\n"
        "Node.js v20.20.2\n"
    )
    assert procs.last_words([node]) == (
        "Error: listen EADDRINUSE: address already in use 127.0.0.1:4242"
    )
    minified = tmp_path / "minified.log"  # a crash in minified JavaScript prints 100 kB lines
    minified.write_text("x" * 100_000 + "\n\nRangeError: WebAssembly.Memory(): no memory\n")
    assert procs.last_words([minified]) == "RangeError: WebAssembly.Memory(): no memory"
    assert max(len(line) for line in procs.tail(minified).splitlines()) <= 400
    quiet, empty = tmp_path / "quiet.log", tmp_path / "empty.log"
    quiet.write_text("starting\nstill starting\n")
    empty.write_text("")
    assert procs.last_words([empty, quiet]) == "still starting"
    assert procs.last_words([empty]) == f"no output in {empty}"


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nobody binds what is handed out here: each port stays free, and must still not recur
    # (2,001 candidates: 200 random picks would repeat one with a probability of 0.99995).
    monkeypatch.setattr(procs, "ephemeral_range", lambda: (12001, 60999))
    ports = [procs.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


@pytest.mark.parametrize(
    ("choice", "built", "expected"),
    [("auto", True, "minio"), ("auto", False, "moto"), ("moto", True, "moto")],
)
def test_s3_server_choice(choice: str, built: bool, expected: str) -> None:
    assert stack_s3.choose_server(choice, built) == expected


def test_s3_server_choice_errors_are_clear() -> None:
    with pytest.raises(procs.ServiceError, match="expected auto, minio or moto"):
        stack_s3.choose_server("ceph", True)
    with pytest.raises(procs.ServiceError, match="MinIO is not built"):
        stack_s3.choose_server("minio", False)
