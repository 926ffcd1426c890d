"""Leases across processes, used as a user would: a `velo-am worker` owns the events, the
`velo-am` commands and a Python job (`examples/leased_job.py`) create and renew them, and
nothing waits forever on a producer that died or stopped renewing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ROOT, Script, velo

pytestmark = pytest.mark.timeout(120)

#: A dead peer is lost within about a second (owner and job alike).
FAST_ENV = {"VELO_HEARTBEAT_INTERVAL": "0.2", "VELO_HEARTBEAT_TIMEOUT": "1.0"}
EXPIRED = re.compile(
    r"poisoned: lease of worker 0x[0-9a-f]+ on 'nightly export' expired: not renewed within 1 s"
)


def ok(*args: str) -> str:
    result = velo(*args)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout.strip()


@pytest.fixture
def seed() -> Iterator[list[str]]:
    """A long-lived `velo-am worker` 0x61 with short liveness windows: `--seed ADDR`."""
    owner = Script(
        "-m", "velo_am", "worker", "--id", "0x61", "--bind", "tcp://127.0.0.1:0", env=FAST_ENV
    )  # fmt: skip
    try:
        _, address = owner.ready()
        yield ["--seed", address]
        owner.signal(signal.SIGTERM)
        assert owner.wait() == 0, owner.stderr()
    finally:
        owner.reap()


def test_an_unrenewed_cli_lease_poisons_its_waiters(seed: list[str]) -> None:
    kept = ok("new-event", "--lease", "60", *seed)
    started = time.monotonic()
    short = ok("new-event", "--label", "nightly export", "--lease", "1", *seed)
    waited = velo("wait", short, "--timeout", "20", *seed)
    assert waited.returncode == 1, (waited.returncode, waited.stderr)
    assert EXPIRED.search(waited.stderr), waited.stderr
    assert time.monotonic() - started >= 1.0, "not before its term"
    # Their creators exited right after creating them: that is no reason to poison.
    assert ok("status", kept, *seed) == "pending"
    refused = velo("renew", short, *seed)
    assert refused.returncode == 1, refused.stderr
    assert "already completed (poisoned: lease of worker" in refused.stderr


def test_cli_renewals_keep_a_lease_alive_until_the_trigger(seed: list[str]) -> None:
    handle = ok("new-event", "--label", "nightly export", "--lease", "3", *seed)
    waiter = Script("-m", "velo_am", "wait", handle, "--timeout", "60", *seed)
    try:
        renewing_until = time.monotonic() + 8  # well past two terms of 3 s
        renewals = 0
        while time.monotonic() < renewing_until:
            ok("renew", handle, *seed)
            renewals += 1
        assert waiter.process.poll() is None, waiter.stderr()
        assert ok("status", handle, *seed) == "pending"
        ok("trigger", handle, *seed)
        assert waiter.wait() == 0, waiter.stderr()
    finally:
        waiter.reap()
    assert renewals >= 3
    done = velo("renew", handle, *seed)
    assert done.returncode == 1 and "already completed (ready)" in done.stderr, done.stderr
    plain = ok("new-event", *seed)
    no_lease = velo("renew", plain, *seed)
    assert no_lease.returncode == 3 and "has no lease" in no_lease.stderr, no_lease.stderr
    assert velo("new-event", "--lease", "0", *seed).returncode == 3
    help_text = velo("renew", "--help").stdout
    assert "examples:" in help_text and "--lease" in help_text


def test_a_killed_producer_poisons_its_event_within_the_liveness_window(
    seed: list[str],
) -> None:
    """The job holds a 60 s lease: only its loss can explain a poison within seconds."""
    job = Script("examples/leased_job.py", seed[1], "--lease", "60", "--work", "600", env=FAST_ENV)
    try:
        job_id = int(job.expect("READY").split()[1], 0)
        handle = job.expect("HANDLE").split()[1]
        waiter = Script("-m", "velo_am", "wait", handle, "--timeout", "30", *seed)
        try:
            assert ok("status", handle, *seed) == "pending"
            job.signal(signal.SIGKILL)
            killed = time.monotonic()
            assert waiter.wait(timeout=40) == 1, waiter.stderr()
            assert time.monotonic() - killed < 15
            expected = (
                f"poisoned: lease of worker {job_id:#x} on 'leased job' ended with its holder: "
                f"worker {job_id:#x} at tcp://127.0.0.1:"
            )
            assert expected in waiter.stderr(), waiter.stderr()
        finally:
            waiter.reap()
    finally:
        job.reap()


def test_a_producer_that_renews_and_finishes_completes_its_event(seed: list[str]) -> None:
    job = Script("examples/leased_job.py", seed[1], "--lease", "1", "--work", "3", env=FAST_ENV)
    try:
        handle = job.expect("HANDLE").split()[1]
        waited = velo("wait", handle, "--timeout", "30", *seed)
        assert waited.returncode == 0, waited.stderr
        job.expect("DONE")
        assert job.wait() == 0, job.stderr()
    finally:
        job.reap()


def test_the_readme_renewal_loop_runs(seed: list[str], tmp_path: Path) -> None:
    """The README's lease example, as a script runs it, its ./backup.sh standing in."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = [
        body
        for body in re.findall(r"^```sh\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
        if "velo-am renew" in body
    ]
    backup = tmp_path / "backup.sh"
    backup.write_text("#!/bin/sh\nsleep 3\n")  # a job that outlives its lease's term
    backup.chmod(0o755)
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VELO_PEERS": seed[1],
    }
    script = block.replace("--lease 60", "--lease 2").replace("sleep 20", "sleep 0.2")
    script += 'velo-am status "$JOB"\n'
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.strip() == "ready", "renewed while backup.sh ran, then triggered"
