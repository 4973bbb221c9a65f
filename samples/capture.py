# Shared harness for the sample-making scripts: record loopback traffic with
# tcpdump while a script drives real servers and clients.
#
# tcpdump reads `lo` through a packet socket filtered to incoming packets, so
# each frame is stored once.  We wait for tcpdump to say "listening" before
# generating traffic, and stop it with SIGINT so it flushes the file.
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent
CAPTURES = SAMPLES / "captures"


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a server we started: `sig` first, SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(family) as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@contextlib.contextmanager
def tcpdump(path: Path, bpf: str, interface: str = "lo", snaplen: int = 262144):
    """Capture `bpf` on `interface` into `path` for the duration of the block."""
    if shutil.which("tcpdump") is None:
        raise RuntimeError("tcpdump is not installed (apt-get install tcpdump)")
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["tcpdump", "-i", interface, "-s", str(snaplen), "--immediate-mode", "-U", "-n", "-w", str(path), bpf],
        stderr=subprocess.PIPE, text=True,
    )
    # tcpdump prints "listening on lo ..." once its socket is ready.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "listening on" in line:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"tcpdump failed: {line.strip()} {proc.stderr.read().strip()}")
    try:
        yield path
    finally:
        time.sleep(0.3)  # let the last packets reach the socket
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        # Keep captures deterministic in ownership when made as root.
        with contextlib.suppress(OSError):
            os.chmod(path, 0o644)
