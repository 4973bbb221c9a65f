#!/usr/bin/env python3
# Make the FTP sample captures from real servers and clients on loopback.
#
# Servers: pyftpdlib (in this process, IPv4 and IPv6 ::1) and vsftpd
# (anonymous, temporary config and root).  Clients: Python ftplib (driven
# step by step, including active mode, EPRT, an RFC 959 urgent ABOR),
# curl and lftp.  tcpdump records one BPF per capture: the control port plus
# the passive and active port ranges this script hands to servers and
# clients, all below Linux's ephemeral range so no unrelated connection
# falls in.
#
# Truth: next to every capture, ftp_<name>.expected.json lists per control
# connection the replies the CLIENT saw, in order: code, first-line text,
# number of lines, the command each answers, and the data bytes the client
# moved for a transfer.  It comes from ftplib's own reply reader, curl's
# --verbose trace and lftp's --debug trace; never from tshark or the analyzer.
# Pairing is the client's: none of these clients pipelines (checked), so a
# reply answers the command the client is waiting on; after an ABOR the
# transfer's 426 comes first (RFC 959 section 4.1.3).  Each step states the
# codes it expects and the script stops if a client saw anything else.
#
# Secrets: every login uses PASSWORD below; expected.json names it
# ("password") so that tests can grep every analyzer output for it.  Client
# traces that print it (curl -v) are parsed in memory and never written.
#
# Determinism: file contents, mtimes, commands and their order are fixed;
# ports and timestamps change per run.
#
#   sudo python3 samples/make_ftp.py                 # all captures
#   sudo python3 samples/make_ftp.py --only vsftpd_curl
#
# Limits: Linux only (tcpdump on `lo`), root needed for tcpdump and vsftpd;
# every server started here is stopped on the way out, failure included.
from __future__ import annotations

import argparse
import contextlib
import ftplib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samples.capture import CAPTURES, tcpdump, wait_port  # noqa: E402

PASSWORD = "s3cret-PASSWORD-xyz"
USER = "sample"                   # pyftpdlib account (vsftpd runs anonymous-only)
FILE_MTIME = 1_700_000_000        # 2023-11-14T22:13:20Z: MDTM / LIST output repeat
BIG_SIZE = 1024 * 1024            # the file whose transfer is aborted
ABORT_AFTER = 16 * 1024           # bytes the client reads before ABOR
RATE = 64 * 1024                  # server send limit (bytes/s) so that ABOR meets a live transfer
BLOCK_TIMEOUT = 1.2               # libpcap's TPACKET_V3 block timeout is tcpdump's 1000 ms
CLIENT_TIMEOUT = 20.0             # seconds for any client step
CAPTURE_ATTEMPTS = 5              # a capture that lost packets is made again
MAX_CAPTURES_BYTES = 2 * 1024 * 1024  # all ftp_*.pcap together (repository budget)
PORT_RANGE_BASE = 20000           # data port ranges live below the ephemeral range (32768+)
RANGE_SIZE = 20


def _pattern(size: int) -> bytes:
    out, block = bytearray(), b"ftp-sample"
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


FILES = {
    "readme.txt": b"FTP sample file.\nServed by the make_ftp.py scenarios.\n",
    "pub/notes.txt": b"notes\n" * 40,
    "big.bin": _pattern(BIG_SIZE),
    # A file whose content looks like FTP and HTTP: on a data connection it
    # must produce no events.
    "decoy.txt": b"220 not a greeting\r\nHTTP/1.1 200 OK\r\nUSER nobody\r\n226 done\r\n",
}
UPLOAD = b"uploaded by ftplib\n" * 8


# --- what a client saw --------------------------------------------------------------

@dataclass
class Reply:
    code: int
    text: str
    lines: int
    request: str
    data_bytes: int | None = None

    def as_json(self) -> dict:
        return {"code": self.code, "text": self.text, "lines": self.lines,
                "request": self.request, "data_bytes": self.data_bytes}


@dataclass
class Session:
    """One control connection as its client saw it."""

    tool: str
    note: str
    server_ip: str
    server_port: int
    client_port: int = 0
    replies: list[Reply] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)   # commands sent, final reply not yet seen
    greeted: bool = False

    def sent(self, line: str) -> None:
        verb, _, arg = line.strip().partition(" ")
        verb = verb.upper()
        request = f"{verb} ****" if verb in ("PASS", "ACCT") else (f"{verb} {arg.strip()}" if arg.strip() else verb)
        if self.waiting and verb != "ABOR":
            raise RuntimeError(f"{self.tool} pipelined {verb} while waiting for {self.waiting}")
        self.waiting.append(request)

    def received(self, lines: list[str]) -> Reply:
        code, text = int(lines[0][:3]), lines[0][4:]
        if not self.greeted and code in (120, 220, 421):
            request = ""                       # the greeting answers nothing
            self.greeted = code != 120
        else:
            self.greeted = True
            if not self.waiting:
                raise RuntimeError(f"{self.tool}: reply {code} with no command outstanding")
            request = self.waiting[0]
            if code >= 200:
                self.waiting.pop(0)
        reply = Reply(code, text, len(lines), request)
        self.replies.append(reply)
        return reply

    def trace(self, events: list[tuple[str, str]]) -> None:
        """Replay a client trace: ("sent", line) and ("line", reply line) in order."""
        block: list[str] = []
        for kind, line in events:
            if kind == "sent":
                self.sent(line)
                continue
            if not block and not re.match(r"\d{3}[ -]|\d{3}$", line):
                raise RuntimeError(f"{self.tool}: unexpected reply line {line!r}")
            block.append(line)
            if re.match(rf"{block[0][:3]}( |$)", line):
                self.received(block)
                block = []
        if block:
            raise RuntimeError(f"{self.tool}: unfinished reply {block}")

    def codes(self) -> list[int]:
        return [r.code for r in self.replies]

    def expect(self, codes: list[int]) -> None:
        # 125 (data connection already open) or 150 (about to open) depends
        # on whether the server accepted the passive connection yet: a race.
        def same(code: int) -> int:
            return 150 if code == 125 else code
        if [same(c) for c in self.codes()] != [same(c) for c in codes]:
            raise RuntimeError(f"{self.tool} ({self.note}): saw {self.codes()}, expected {codes}")


# --- servers ----------------------------------------------------------------------

@dataclass
class Ports:
    control: int
    passive: tuple[int, int]
    active: tuple[int, int]

    def bpf(self) -> str:
        (p0, p1), (a0, a1) = self.passive, self.active
        return f"tcp and (port {self.control} or portrange {p0}-{p1} or portrange {a0}-{a1})"


def _range_free(start: int, count: int) -> bool:
    for port in range(start, start + count):
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    return False
    return True


def port_ranges() -> Ports:
    """A control port and two data port ranges, free and below the ephemeral range."""
    found = []
    start = PORT_RANGE_BASE
    while len(found) < 3 and start + RANGE_SIZE < 32768:
        if _range_free(start, RANGE_SIZE):
            found.append((start, start + RANGE_SIZE - 1))
        start += RANGE_SIZE
    if len(found) < 3:
        raise RuntimeError("no free port ranges below 32768")
    return Ports(found[0][0], found[1], found[2])


def write_files(root: Path) -> None:
    for rel, content in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (FILE_MTIME, FILE_MTIME))
    for path in [root / "pub", root]:
        os.utime(path, (FILE_MTIME, FILE_MTIME))


@contextlib.contextmanager
def pyftpdlib_server(host: str, port: int, root: Path, ports: Ports):
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler, ThrottledDTPHandler
    from pyftpdlib.servers import FTPServer

    quiet = logging.getLogger("pyftpdlib")   # a handler stops pyftpdlib configuring its own
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    authorizer = DummyAuthorizer()
    authorizer.add_user(USER, PASSWORD, str(root), perm="elradfmw")
    dtp = type("SampleDTP", (ThrottledDTPHandler,), {"read_limit": RATE, "write_limit": RATE})
    handler = type("SampleHandler", (FTPHandler,), {
        "authorizer": authorizer, "dtp_handler": dtp,
        "passive_ports": range(ports.passive[0], ports.passive[1] + 1),
        "banner": "pyftpdlib sample server ready.",
        "auth_failed_timeout": 0,        # answer 530 at once (default waits 3 s)
        "use_sendfile": False,
    })
    server = FTPServer((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.1}, daemon=True)
    thread.start()
    try:
        wait_port(port, host)
        yield
    finally:
        server.close_all()
        thread.join(timeout=5)


VSFTPD_CONF = """\
listen=YES
listen_ipv6=NO
listen_address={host}
listen_port={port}
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=NO
anon_root={root}
no_anon_password=NO
secure_chroot_dir={empty}
seccomp_sandbox=NO
pasv_enable=YES
pasv_min_port={p0}
pasv_max_port={p1}
port_enable=YES
connect_from_port_20=NO
async_abor_enable=YES
anon_max_rate={rate}
xferlog_enable=NO
dirmessage_enable=NO
use_localtime=NO
"""


@contextlib.contextmanager
def vsftpd_server(host: str, port: int, root: Path, ports: Ports, workdir: Path):
    binary = shutil.which("vsftpd") or ("/usr/sbin/vsftpd" if Path("/usr/sbin/vsftpd").exists() else None)
    if binary is None:
        raise SystemExit("make_ftp.py: vsftpd is not installed (apt-get install vsftpd)")
    empty = workdir / "vsftpd-empty"
    empty.mkdir(exist_ok=True)
    # vsftpd refuses an anonymous root the ftp user could write to.
    for path in [root, *root.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    conf = workdir / "vsftpd.conf"
    conf.write_text(VSFTPD_CONF.format(host=host, port=port, root=root, empty=empty,
                                       p0=ports.passive[0], p1=ports.passive[1], rate=RATE))
    log = (workdir / "vsftpd.log").open("w")
    proc = subprocess.Popen([binary, str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, host)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --- ftplib, driven step by step ---------------------------------------------------------

class RecordingFTP(ftplib.FTP):
    """ftplib whose every command and reply lands in a Session."""

    def __init__(self, session: Session, ports: Ports) -> None:
        super().__init__(timeout=CLIENT_TIMEOUT)
        self.session = session
        self.ports = ports

    def putline(self, line: str) -> None:
        self.session.sent(line)
        super().putline(line)

    def getmultiline(self) -> str:
        resp = super().getmultiline()
        self.session.received(resp.split("\n"))
        return resp

    # Data connections in every mode, the client choosing (not ftplib's defaults).
    def open_data(self, mode: str) -> tuple[socket.socket | None, socket.socket | None]:
        """Returns (connected data socket, listening socket) before the transfer command."""
        peer = self.sock.getpeername()[0]
        if mode in ("PASV", "EPSV"):
            resp = self.sendcmd(mode)
            if mode == "PASV":
                host, port = ftplib.parse227(resp)
            else:
                host, port = ftplib.parse229(resp, self.sock.getpeername())
            return socket.create_connection((host, port), timeout=CLIENT_TIMEOUT), None
        family = self.sock.family
        listener = socket.socket(family, socket.SOCK_STREAM)
        for port in range(self.ports.active[0], self.ports.active[1] + 1):
            try:
                listener.bind((peer, port))
                break
            except OSError:
                continue
        else:
            raise RuntimeError("no free active port")
        listener.listen(1)
        listener.settimeout(CLIENT_TIMEOUT)
        if mode == "PORT":
            self.sendport(peer, listener.getsockname()[1])
        else:
            self.sendeprt(peer, listener.getsockname()[1])
        return None, listener

    def transfer(self, mode: str, command: str, upload: bytes | None = None) -> int | None:
        """One data transfer; returns the bytes moved (None if the command was refused)."""
        conn, listener = self.open_data(mode)
        try:
            try:
                self.sendcmd(command)               # 150 (or an error)
            except ftplib.error_perm:
                return None
            if conn is None:
                conn, _ = listener.accept()
            moved = 0
            with conn:
                if upload is None:
                    while chunk := conn.recv(65536):
                        moved += len(chunk)
                else:
                    conn.sendall(upload)
                    moved = len(upload)
            self.voidresp()                          # 226
            self.session.replies[-1].data_bytes = moved
            return moved
        finally:
            if listener is not None:
                listener.close()
            if conn is not None:
                conn.close()

    def aborted_transfer(self, mode: str, command: str, telnet: bool) -> None:
        """Read ABORT_AFTER bytes of a transfer, then ABOR it.

        telnet=False: Python ftplib's abort() (ABOR sent as urgent data);
        telnet=True: as BSD ftp does, RFC 959 section 4.1.3: IAC IP, then the
        Synch (IAC DM with DM urgent), then ABOR.
        """
        conn, listener = self.open_data(mode)
        try:
            self.sendcmd(command)                    # 150
            if conn is None:
                conn, _ = listener.accept()
            got = 0
            while got < ABORT_AFTER:
                chunk = conn.recv(ABORT_AFTER - got)
                if not chunk:
                    raise RuntimeError("transfer ended before ABOR")
                got += len(chunk)
            if telnet:
                self.session.sent("ABOR")
                self.sock.sendall(b"\xff\xf4\xff")
                self.sock.sendall(b"\xf2", socket.MSG_OOB)
                self.sock.sendall(b"ABOR\r\n")
                self.getmultiline()
            else:
                self.session.sent("ABOR")            # abort() writes the socket itself
                self.abort()
            conn.close()
            conn = None
            while self.session.waiting:              # 426 for the transfer, then 226/225 for ABOR
                self.getmultiline()
        finally:
            if listener is not None:
                listener.close()
            if conn is not None:
                conn.close()


def ftplib_session(host: str, port: int, ports: Ports, note: str, steps) -> Session:
    session = Session("ftplib", note, host, port)
    ftp = RecordingFTP(session, ports)
    try:
        ftp.connect(host, port)
        session.client_port = ftp.sock.getsockname()[1]
        steps(ftp)
    finally:
        with contextlib.suppress(OSError, EOFError, ftplib.Error):
            ftp.quit()
        ftp.close()
    return session


def expect_error(call, *args) -> None:
    try:
        call(*args)
    except ftplib.error_perm:
        return
    raise RuntimeError(f"{call.__name__}{args} did not fail")


# --- curl and lftp -------------------------------------------------------------------

def curl_session(url: str, args: list[str], note: str, server_ip: str, server_port: int,
                 ok: bool = True) -> Session:
    if shutil.which("curl") is None:
        raise SystemExit("make_ftp.py: curl is not installed")
    # curl sends QUIT when it tears the connection down, after its trace has
    # ended: the 221 would be on the wire but not in the trace.  A post-quote
    # QUIT ("-QUIT") is traced; the teardown QUIT then meets a closed
    # connection and gets no reply.  On failure curl closes without QUIT.
    quit_ = ["--quote", "-QUIT"] if ok else []
    cmd = ["curl", "--silent", "--verbose", "--max-time", str(CLIENT_TIMEOUT), "--output", os.devnull,
           "--write-out", "%{local_port} %{size_download} %{size_upload}", *quit_, *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if (proc.returncode == 0) != ok:
        raise RuntimeError(f"curl ({note}) exit {proc.returncode}")
    events = []
    for line in proc.stderr.splitlines():      # curl prints the password here: parse, never keep
        if line.startswith("> "):
            events.append(("sent", line[2:]))
        elif line.startswith("< "):
            events.append(("line", line[2:]))
    session = Session("curl", note, server_ip, server_port)
    session.trace(events)
    local, down, up = proc.stdout.split()
    session.client_port = int(local)
    transfers = [r for r in session.replies if r.request.split(" ")[0] in ("RETR", "STOR", "LIST", "NLST")
                 and r.code == 226]
    if transfers:
        transfers[-1].data_bytes = int(down) + int(up)
    return session


def lftp_session(host: str, port: int, script: str, note: str) -> Session:
    if shutil.which("lftp") is None:
        raise SystemExit("make_ftp.py: lftp is not installed")
    setup = "set ftp:sync-mode true; set net:max-retries 1; set net:timeout 10; set cache:enable false; "
    cmd = ["lftp", "-d", "-u", f"anonymous,{PASSWORD}", "-p", str(port), "-e", setup + script + "; bye", host]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=CLIENT_TIMEOUT * 3)
    events = []
    for line in proc.stderr.splitlines():
        if line.startswith("---> "):
            events.append(("sent", line[5:]))
        elif line.startswith("<--- "):
            events.append(("line", line[5:]))
    session = Session("lftp", note, host, port)
    session.trace(events)
    return session


# --- scenarios ----------------------------------------------------------------------

@dataclass
class Env:
    workdir: Path
    root: Path
    ports: Ports
    pcap: Path

    @contextlib.contextmanager
    def capture(self):
        """Record the clients' traffic (servers start before it: their readiness probe stays out)."""
        with tcpdump(self.pcap, self.ports.bpf()):
            yield
            # XX: samples.capture runs tcpdump without --immediate-mode, so
            # libpcap hands packets over in blocks retired every 1 s; stopping
            # sooner loses the last block.
            time.sleep(BLOCK_TIMEOUT)


def scenario_pyftpdlib_ipv4(env: Env) -> tuple[str, int, list[Session]]:
    host, port = "127.0.0.1", env.ports.control
    sessions = []
    with pyftpdlib_server(host, port, env.root, env.ports), env.capture():
        def main(ftp: RecordingFTP) -> None:
            expect_error(ftp.login, USER, "wrong-password")
            ftp.login(USER, PASSWORD)
            ftp.sendcmd("FEAT")
            ftp.sendcmd("HELP")
            ftp.sendcmd("SYST")
            ftp.sendcmd("PWD")
            ftp.sendcmd("TYPE I")
            ftp.transfer("PASV", "LIST")
            ftp.transfer("EPSV", "RETR readme.txt")
            ftp.transfer("PORT", "RETR pub/notes.txt")
            ftp.transfer("EPRT", "NLST")
            ftp.transfer("PASV", "RETR decoy.txt")
            ftp.transfer("PASV", "STOR upload.txt", upload=UPLOAD)
            ftp.sendcmd("SIZE upload.txt")
            ftp.sendcmd("DELE upload.txt")
            ftp.transfer("PASV", "RETR missing.txt")
            expect_error(ftp.sendcmd, "XYZZ")
            expect_error(ftp.sendcmd, "CWD /nowhere")
            ftp.aborted_transfer("PASV", "RETR big.bin", telnet=False)
            ftp.sendcmd("NOOP")
        s = ftplib_session(host, port, env.ports, "login failure then success; every data mode; ABOR", main)
        s.expect([220, 331, 530, 331, 230, 211, 214, 215, 257, 200, 227, 125, 226, 229, 125, 226,
                  200, 125, 226, 200, 125, 226, 227, 125, 226, 227, 125, 226, 213, 250, 227, 550,
                  500, 550, 227, 125, 426, 226, 200, 221])
        sessions.append(s)

        def brute(ftp: RecordingFTP) -> None:
            for user in ("admin", "root"):
                expect_error(ftp.login, user, PASSWORD)
        s = ftplib_session(host, port, env.ports, "two failed logins", brute)
        s.expect([220, 331, 530, 331, 530, 221])
        sessions.append(s)
    return host, port, sessions


def scenario_pyftpdlib_ipv6(env: Env) -> tuple[str, int, list[Session]]:
    host, port = "::1", env.ports.control
    sessions = []
    with pyftpdlib_server(host, port, env.root, env.ports), env.capture():
        def main(ftp: RecordingFTP) -> None:
            ftp.login(USER, PASSWORD)
            ftp.sendcmd("FEAT")
            ftp.transfer("EPSV", "LIST")
            ftp.transfer("EPRT", "RETR readme.txt")
            ftp.transfer("EPSV", "RETR missing.txt")
        s = ftplib_session(host, port, env.ports, "IPv6: EPSV and EPRT", main)
        s.expect([220, 331, 230, 211, 229, 150, 226, 200, 150, 226, 229, 550, 221])
        sessions.append(s)
        url = f"ftp://[::1]:{port}/"
        creds = ["--globoff", "--user", f"{USER}:{PASSWORD}"]
        s = curl_session(url + "readme.txt", creds, "curl over IPv6, EPSV", host, port)
        s.expect([220, 331, 230, 257, 229, 200, 213, 150, 226, 221])
        sessions.append(s)
        active = ["--ftp-port", f"[::1]:{env.ports.active[0]}-{env.ports.active[1]}"]
        s = curl_session(url + "pub/", creds + active, "curl over IPv6, EPRT + LIST", host, port)
        s.expect([220, 331, 230, 257, 250, 200, 200, 150, 226, 221])
        sessions.append(s)
    return host, port, sessions


def scenario_vsftpd_curl(env: Env) -> tuple[str, int, list[Session]]:
    host, port = "127.0.0.1", env.ports.control
    sessions = []
    with vsftpd_server(host, port, env.root, env.ports, env.workdir), env.capture():
        url = f"ftp://{host}:{port}/"
        anon = ["--user", f"anonymous:{PASSWORD}"]
        active = ["--ftp-port", f"{host}:{env.ports.active[0]}-{env.ports.active[1]}"]
        steps = [
            (url + "readme.txt", anon, "EPSV + RETR", True,
             [220, 331, 230, 257, 229, 200, 213, 150, 226, 221]),
            (url, anon + ["--disable-epsv", "--quote", "HELP", "--quote", "*XYZZ", "--quote", "*SIZE missing.txt"],
             "PASV + LIST; HELP, an unknown command, a missing file", True,
             [220, 331, 230, 257, 214, 500, 550, 227, 200, 150, 226, 221]),
            (url + "pub/notes.txt", anon + active + ["--disable-eprt"], "PORT + RETR", True,
             [220, 331, 230, 257, 250, 200, 200, 213, 150, 226, 221]),
            (url + "decoy.txt", anon + active, "EPRT + RETR of a file that looks like FTP and HTTP", True,
             [220, 331, 230, 257, 200, 200, 213, 150, 226, 221]),
            (url + "readme.txt", ["--user", f"bob:{PASSWORD}"], "non-anonymous user refused", False,
             [220, 530]),
        ]
        for target, args, note, ok, codes in steps:
            s = curl_session(target, args, note, host, port, ok=ok)
            s.expect(codes)
            sessions.append(s)
    return host, port, sessions


def scenario_vsftpd_lftp(env: Env) -> tuple[str, int, list[Session]]:
    host, port = "127.0.0.1", env.ports.control
    with vsftpd_server(host, port, env.root, env.ports, env.workdir), env.capture():
        out = env.workdir / "lftp-out"
        script = (f"ls; get readme.txt -o {out}-1; set ftp:passive-mode false; "
                  f"set ftp:port-range {env.ports.active[0]}-{env.ports.active[1]}; ls pub; "
                  f"get missing.txt -o {out}-2")
        s = lftp_session(host, port, script, "FEAT, AUTH TLS refused, PASV + LIST/RETR, PORT + LIST, 550")
        retr = [r for r in s.replies if r.request == "RETR readme.txt" and r.code == 226]
        retr[0].data_bytes = Path(f"{out}-1").stat().st_size
        s.expect([220, 211, 530, 331, 230, 257, 227, 150, 226, 200, 213, 213, 227, 150, 226,
                  200, 200, 150, 226, 200, 550, 550, 200, 550, 221])
        return host, port, [s]


def scenario_vsftpd_ftplib(env: Env) -> tuple[str, int, list[Session]]:
    host, port = "127.0.0.1", env.ports.control
    with vsftpd_server(host, port, env.root, env.ports, env.workdir), env.capture():
        def main(ftp: RecordingFTP) -> None:
            expect_error(ftp.login, "alice", PASSWORD)
            ftp.login("anonymous", PASSWORD)
            ftp.sendcmd("FEAT")
            ftp.sendcmd("HELP")
            ftp.sendcmd("STAT")
            ftp.sendcmd("TYPE I")
            ftp.transfer("PASV", "RETR readme.txt")
            ftp.transfer("EPRT", "LIST pub")
            expect_error(ftp.sendcmd, "XYZZ")
            expect_error(ftp.sendcmd, "STOR nope.txt")
            ftp.aborted_transfer("PASV", "RETR big.bin", telnet=True)
            ftp.sendcmd("NOOP")
        s = ftplib_session(host, port, env.ports, "refused user, anonymous login, STAT, urgent ABOR with Telnet IP/DM", main)
        s.expect([220, 530, 331, 230, 211, 214, 211, 200, 227, 150, 226, 200, 150, 226,
                  500, 550, 227, 150, 426, 226, 200, 221])
        return host, port, [s]


SCENARIOS = {
    "pyftpdlib_ipv4": scenario_pyftpdlib_ipv4,
    "pyftpdlib_ipv6": scenario_pyftpdlib_ipv6,
    "vsftpd_curl": scenario_vsftpd_curl,
    "vsftpd_lftp": scenario_vsftpd_lftp,
    "vsftpd_ftplib": scenario_vsftpd_ftplib,
}


# --- capture ------------------------------------------------------------------------

def pcap_tcp(pcap: Path):
    """(src_port, dst_port, flags, seq, payload length) of every TCP packet of a `lo` capture."""
    data = pcap.read_bytes()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0] & 0xFFFF
    offset = 24
    while offset + 16 <= len(data):
        caplen = struct.unpack(endian + "I", data[offset + 8:offset + 12])[0]
        frame = data[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen
        if linktype == 1:
            ethertype, ip = struct.unpack("!H", frame[12:14])[0], frame[14:]
        elif linktype == 113:
            ethertype, ip = struct.unpack("!H", frame[14:16])[0], frame[16:]
        else:
            raise RuntimeError(f"{pcap.name}: unexpected link type {linktype}")
        if ethertype == 0x0800 and len(ip) >= 20 and ip[9] == 6:
            header = (ip[0] & 0x0F) * 4
            tcp, size = ip[header:], struct.unpack("!H", ip[2:4])[0] - header
        elif ethertype == 0x86DD and len(ip) >= 40 and ip[6] == 6:
            tcp, size = ip[40:], struct.unpack("!H", ip[4:6])[0]
        else:
            continue
        if len(tcp) >= 14:
            sport, dport, seq = struct.unpack("!HHI", tcp[:8])
            yield sport, dport, tcp[13], seq, size - (tcp[12] >> 4) * 4


def sequence_holes(pcap: Path) -> list[tuple[int, int]]:
    """(src, dst) port pairs whose byte stream has a hole: packets the capture lost."""
    expected: dict = {}
    holes = []
    for sport, dport, flags, seq, length in pcap_tcp(pcap):
        key = (sport, dport)
        if flags & 0x02:
            expected[key] = (seq + 1) & 0xFFFFFFFF
            continue
        if key not in expected:
            holes.append(key)                       # the SYN itself is missing
            expected[key] = seq
        ahead = (seq - expected[key]) & 0xFFFFFFFF
        if 0 < ahead < 0x80000000:
            holes.append(key)
        if ahead == 0 or 0 < ahead < 0x80000000:
            expected[key] = (seq + length + (1 if flags & 0x01 else 0)) & 0xFFFFFFFF
    return holes


def control_client_ports(pcap: Path, server_port: int) -> list[int]:
    """Client ports of the control connections, in the order of their SYNs."""
    ports = []
    for sport, dport, flags, _, _ in pcap_tcp(pcap):
        if dport == server_port and flags & 0x12 == 0x02 and sport not in ports:
            ports.append(sport)
    return ports


def unclosed(pcap: Path, client_ports: list[int]) -> list[int]:
    closed = set()
    for sport, dport, flags, _, _ in pcap_tcp(pcap):
        if flags & 0x05:
            closed.update((sport, dport))
    return [port for port in client_ports if port not in closed]


def expected_document(name: str, host: str, port: int, sessions: list[Session]) -> dict:
    conns, events = [], []
    for number, s in enumerate(sessions, 1):
        conns.append({
            "id": number, "tool": s.tool, "note": s.note,
            "client_ip": host, "client_port": s.client_port, "server_ip": host, "server_port": port,
            "replies": [r.as_json() for r in s.replies],
        })
        events += [{
            "protocol": "ftp", "client_ip": host, "client_port": s.client_port,
            "server_ip": host, "server_port": port, "code": r.code, "text": r.text,
            "request": r.request, "lines": r.lines, "data_bytes": r.data_bytes, "connection": number,
        } for r in s.replies]
    return {
        "capture": f"ftp_{name}.pcap",
        "made_by": "samples/make_ftp.py",
        "truth": "what the clients saw: ftplib's reply reader, curl --verbose, lftp --debug; never tshark. "
                 "`events` is in client order per connection (score.py layout); PASS/ACCT arguments "
                 "are written ****; data_bytes is what the client moved for that transfer.",
        "password": PASSWORD,
        "server_port": port,
        "connections": conns,
        "events": events,
    }


def make_captures(names: list[str]) -> None:
    if os.geteuid() != 0:
        raise SystemExit("make_ftp.py: tcpdump and vsftpd need root (run with sudo)")
    if shutil.which("tcpdump") is None:
        raise SystemExit("make_ftp.py: tcpdump is not installed")
    CAPTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="make_ftp-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)          # vsftpd's anonymous root lives below it
        for name in names:
            root = workdir / f"root-{name}"
            write_files(root)
            pcap = workdir / f"ftp_{name}.pcap"
            started = time.monotonic()
            for attempt in range(1, CAPTURE_ATTEMPTS + 1):
                env = Env(workdir, root, port_ranges(), pcap)
                host, port, sessions = SCENARIOS[name](env)
                holes = sequence_holes(pcap)
                open_ends = unclosed(pcap, control_client_ports(pcap, port))
                if not holes and not open_ends:
                    break
                # XX: under CPU load tcpdump (through samples.capture) sometimes
                # reports "packets dropped by kernel"; a sample must be whole.
                print(f"ftp_{name}.pcap: attempt {attempt} lost packets "
                      f"(holes {sorted(set(holes))}, no FIN/RST {open_ends}); again")
            else:
                raise RuntimeError(f"ftp_{name}.pcap: packets lost in {CAPTURE_ATTEMPTS} attempts")
            seen = control_client_ports(pcap, port)
            for session in sessions:
                if not session.client_port:       # lftp does not say: the capture's SYN order does
                    session.client_port = seen[sessions.index(session)]
            if [s.client_port for s in sessions] != seen:
                raise RuntimeError(f"ftp_{name}.pcap: control connections {seen}, clients used "
                                   f"{[s.client_port for s in sessions]}")
            document = expected_document(name, host, port, sessions)
            target = CAPTURES / pcap.name
            shutil.move(pcap, target)
            with contextlib.suppress(OSError):   # tcpdump wrote it as its own user
                owner = CAPTURES.stat()
                os.chown(target, owner.st_uid, owner.st_gid)
            (CAPTURES / f"ftp_{name}.expected.json").write_text(json.dumps(document, indent=1) + "\n")
            print(f"{target.name}: {len(sessions)} control connections, {len(document['events'])} replies, "
                  f"{target.stat().st_size} bytes, {time.monotonic() - started:.1f} s")
    total = sum(p.stat().st_size for p in CAPTURES.glob("ftp_*.pcap"))
    print(f"all ftp_*.pcap: {total} bytes")
    if total > MAX_CAPTURES_BYTES:
        raise SystemExit(f"make_ftp.py: captures total {total} bytes, over {MAX_CAPTURES_BYTES}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Make the FTP sample captures (pyftpdlib, vsftpd; ftplib, curl, lftp; tcpdump).",
        epilog="example: sudo python3 samples/make_ftp.py --only vsftpd_curl")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="make these captures only")
    args = parser.parse_args(argv)
    make_captures(args.only or list(SCENARIOS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
