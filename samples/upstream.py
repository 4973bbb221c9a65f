# A small HTTP/1.1 application server for the sample captures: it answers
# whatever status, framing or timing a path asks for, so that nginx (in front
# of it) and the raw clients of make_http.py produce real traffic for every
# case the HTTP dissector must handle.
#
# Strategy: http.server parses requests (one thread per connection,
# keep-alive), but every response is written as raw bytes, so the status line,
# the reason phrase, the header order and the body framing are exactly what
# the route says -- including things http.server would never send by itself
# (a status line split over several TCP segments, trailers, a close-delimited
# HTTP/1.0 body, an early final status instead of 100 Continue).  Bodies are
# fixed text, so two runs differ only in ports, dates and timestamps.
#
# Routes (any method; HEAD gets the GET headers and no body):
#   /status/NNN[?reason=TEXT]  status NNN, reason from the IANA registry or TEXT
#   /slow/MS                   200 after MS milliseconds (nginx 504 tests)
#   /chunked                   chunked body with a trailer (Trailer: X-Checksum)
#   /nolength                  HTTP/1.1 200 without framing: body ends at close
#   /http10                    "HTTP/1.0 200 OK", close-delimited
#   /split                     status line and headers in several TCP segments
#   /early-hints               103 Early Hints, then 200
#   /large/N                   N bytes of a fixed pattern
#   /etag                      ETag "v1"; If-None-Match "v1" gives 304
#   /upload                    POST: honours Expect: 100-continue, answers 201
#   /upload/reject             Expect: 100-continue answered by 417 at once
#   /echo                      200 with the method, URI and Host it received
#   /iis/SUB                   IIS 10-style detailed error page, e.g. /iis/403.14
#                              (gzip or deflate when Accept-Encoding allows)
#   /iis-custom/404            IIS-style custom error page (no sub-status)
#   /iis-help                  200 page that quotes an IIS error heading
#
# Limits: one thread per connection, no TLS, request bodies read whole
# (MAX_BODY); this is a test fixture, not a server to expose.
from __future__ import annotations

import argparse
import gzip
import socket
import sys
import threading
import time
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 1024 * 1024  # fixture limit; nginx's client_max_body_size default is 1M
SPLIT_PAUSE = 0.05      # seconds between pieces, enough for separate segments on lo
CRLF = "\r\n"

IIS_HEADERS = (("Server", "Microsoft-IIS/10.0"), ("X-Powered-By", "ASP.NET"))

# IIS sub-status pages we mimic: code -> (status, reason, heading, summary,
# module, handler, likely cause).  Texts are ours, written after the layout
# of IIS 10's detailed error pages.
IIS_PAGES = {
    "401.2": (401, "Unauthorized", "Unauthorized",
              "You do not have permission to view this page because of the authentication headers you sent.",
              "IIS Web Core", "StaticFile",
              "No authentication method the server accepts was offered by the browser."),
    "403.14": (403, "Forbidden", "Forbidden",
               "The server is set up not to list what this directory holds.",
               "DirectoryListingModule", "StaticFile",
               "No default document is configured for this URL and directory browsing is off."),
    "404.0": (404, "Not Found", "Not Found",
              "The resource you are looking for has been removed, renamed, or is not available right now.",
              "IIS Web Core", "StaticFile",
              "The directory or file asked for does not exist on this server."),
    "404.3": (404, "Not Found", "Not Found",
              "This page cannot be served because of how the extension is configured.",
              "StaticFileModule", "StaticFile",
              "No MIME map is defined for this file name extension."),
    "500.19": (500, "Internal Server Error", "Internal Server Error",
               "The page cannot be shown because the configuration data for it is not valid.",
               "IIS Web Core", "Not yet determined",
               "The web.config file of this site holds an element the server cannot read."),
    "502.2": (502, "Bad Gateway", "Bad Gateway",
              "The CGI application returned an incomplete set of HTTP headers.",
              "CgiModule", "CGI-exe",
              "The CGI program ended before it sent a complete header block."),
}

IIS_PAGE = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"/>
<title>IIS 10.0 Detailed Error - {sub} - {heading}</title>
<style type="text/css">
body{{margin:0;font-size:.7em;font-family:Verdana,Arial,Helvetica,sans-serif;}}
#content{{margin:0 0 0 2%;position:relative;}}
.content-container{{background:#FFF;width:96%;margin-top:8px;padding:10px;position:relative;}}
h3{{font-size:1.2em;margin:10px 0 0 0;color:#CC0000;}}
th{{width:25%;text-align:right;vertical-align:top;padding-right:5px;}}
</style>
</head>
<body>
<div id="content">
<div class="content-container">
  <h3>HTTP Error {sub} - {heading}</h3>
  <h4>{summary}</h4>
</div>
<div class="content-container">
  <fieldset><h4>Most likely causes:</h4>
  <ul><li>{cause}</li></ul>
  </fieldset>
</div>
<div class="content-container">
  <fieldset><h4>Detailed Error Information:</h4>
  <table border="0" cellpadding="0" cellspacing="0">
    <tr class="alt"><th>Module</th><td>&nbsp;&nbsp;&nbsp;{module}</td></tr>
    <tr><th>Notification</th><td>&nbsp;&nbsp;&nbsp;ExecuteRequestHandler</td></tr>
    <tr class="alt"><th>Handler</th><td>&nbsp;&nbsp;&nbsp;{handler}</td></tr>
    <tr><th>Error Code</th><td>&nbsp;&nbsp;&nbsp;0x00000000</td></tr>
    <tr class="alt"><th>Requested URL</th><td>&nbsp;&nbsp;&nbsp;http://{host}{uri}</td></tr>
    <tr><th>Physical Path</th><td>&nbsp;&nbsp;&nbsp;C:\\inetpub\\wwwroot</td></tr>
    <tr class="alt"><th>Logon Method</th><td>&nbsp;&nbsp;&nbsp;Anonymous</td></tr>
  </table>
  </fieldset>
</div>
</div>
</body>
</html>
"""

IIS_CUSTOM_404 = """<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"/>
<title>404 - File or directory not found.</title>
</head>
<body>
<div id="header"><h1>Server Error</h1></div>
<div id="content">
 <div class="content-container"><fieldset>
  <h2>404 - File or directory not found.</h2>
  <h3>The resource you are looking for might have been removed, had its name changed, or is temporarily unavailable.</h3>
 </fieldset></div>
</div>
</body>
</html>
"""

IIS_HELP = """<!DOCTYPE html>
<html><head><title>Help: reading IIS error pages</title></head>
<body>
<p>When directory browsing is off, IIS answers a folder URL with a page whose
heading reads <code>HTTP Error 403.14 - Forbidden</code>.  This help page is
itself a normal 200 response and carries no error.</p>
</body></html>
"""


def reason_for(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def pattern(size: int) -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
    return (line * (size // len(line) + 1))[:size]


def head_bytes(status_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [status_line] + [f"{name}: {value}" for name, value in headers]
    return (CRLF.join(lines) + CRLF + CRLF).encode("latin-1")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "samples-upstream/1"

    # -- http.server hooks -------------------------------------------------

    def handle_expect_100(self):
        # An early final status (RFC 9110 §10.1.1): refuse before the body.
        if urlsplit(self.path).path == "/upload/reject":
            body = b"expectation refused before the body was sent\n"
            self._send(417, "Expectation Failed", [("Content-Type", "text/plain")], body)
            self.close_connection = True
            return False
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def log_message(self, format, *args):  # noqa: A002 - http.server's name
        if self.server.log_file is not None:
            self.server.log_file.write("%s %s\n" % (self.address_string(), format % args))
            self.server.log_file.flush()

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            # nginx gave up on a slow response (504 tests): nothing to do.
            self.close_connection = True

    def do_GET(self):
        self._route()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    # -- helpers -------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return b""
        return self.rfile.read(length) if length else b""

    def _send(self, code: int, reason: str, headers: list[tuple[str, str]],
              body: bytes = b"", version: str = "HTTP/1.1", framing: str = "length") -> None:
        """Write one response; `framing` is "length", "close" or "none"."""
        headers = list(headers)
        no_body = code < 200 or code in (204, 304)
        if framing == "length" and not no_body:
            headers.append(("Content-Length", str(len(body))))
        if framing == "close":
            self.close_connection = True
            if version == "HTTP/1.1":
                headers.append(("Connection", "close"))
        self.wfile.write(head_bytes(f"{version} {code} {reason}", headers))
        if self.command != "HEAD" and not no_body:
            self.wfile.write(body)

    def _accepted_encoding(self) -> str:
        accept = (self.headers.get("Accept-Encoding") or "").lower()
        offered = {part.split(";")[0].strip() for part in accept.split(",")}
        for encoding in ("gzip", "deflate"):
            if encoding in offered:
                return encoding
        return "identity"

    # -- routes --------------------------------------------------------------

    def _route(self) -> None:
        body_in = self._read_body() if self.command in ("POST", "PUT", "PATCH") else b""
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        head = parts[0] if parts else ""
        arg = parts[1] if len(parts) > 1 else ""
        text = [("Content-Type", "text/plain; charset=utf-8")]

        if head == "status" and arg.isdigit() and 200 <= int(arg) <= 999:
            code = int(arg)
            reason = query.get("reason", [reason_for(code)])[0]
            self._send(code, reason, text, f"{code} {reason}\n".encode())
        elif head == "slow" and arg.isdigit():
            time.sleep(int(arg) / 1000)
            self._send(200, "OK", text, f"slept {arg} ms\n".encode())
        elif head == "chunked":
            self._chunked()
        elif head == "nolength":
            self._send(200, "OK", text, b"body delimited by the end of the connection\n",
                       version=self.request_version if self.request_version == "HTTP/1.0" else "HTTP/1.1",
                       framing="close")
        elif head == "http10":
            self._send(200, "OK", text, b"an HTTP/1.0 reply, no Content-Length\n",
                       version="HTTP/1.0", framing="close")
        elif head == "split":
            self._split()
        elif head == "early-hints":
            self.wfile.write(head_bytes("HTTP/1.1 103 Early Hints",
                                        [("Link", "</static/style.css>; rel=preload; as=style")]))
            self._send(200, "OK", text, b"after early hints\n")
        elif head == "large" and arg.isdigit():
            self._send(200, "OK", [("Content-Type", "application/octet-stream")],
                       pattern(min(int(arg), 16 * MAX_BODY)))
        elif head == "etag":
            if self.headers.get("If-None-Match") == '"v1"':
                self._send(304, "Not Modified", [("ETag", '"v1"')])
            else:
                self._send(200, "OK", text + [("ETag", '"v1"')], b"versioned content v1\n")
        elif head == "upload":
            self._send(201, "Created", text + [("Location", "/upload/1")],
                       f"stored {len(body_in)} bytes\n".encode())
        elif head == "echo":
            host = self.headers.get("Host", "")
            self._send(200, "OK", text, f"{self.command} {self.path} host={host}\n".encode())
        elif head == "iis" and arg in IIS_PAGES:
            self._iis(arg)
        elif head == "iis-custom" and arg == "404":
            self._send(404, "Not Found", [("Content-Type", "text/html")] + list(IIS_HEADERS),
                       IIS_CUSTOM_404.encode("latin-1"))
        elif head == "iis-help":
            self._send(200, "OK", [("Content-Type", "text/html")] + list(IIS_HEADERS),
                       IIS_HELP.encode("latin-1"))
        else:
            self._send(404, "Not Found", text, b"no such route\n")

    def _chunked(self) -> None:
        headers = [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked"),
                   ("Trailer", "X-Checksum")]
        self.wfile.write(head_bytes("HTTP/1.1 200 OK", headers))
        if self.command == "HEAD":
            return
        pieces = [b"first chunk\n", b"second, longer chunk of the body\n", b"third\n"]
        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        checksum = zlib.crc32(b"".join(pieces))
        self.wfile.write(b"0\r\nX-Checksum: %08x\r\n\r\n" % checksum)

    def _split(self) -> None:
        body = b"status line sent in three segments\n"
        raw = head_bytes("HTTP/1.1 200 OK", [("Content-Type", "text/plain"),
                                             ("Content-Length", str(len(body)))])
        if self.command != "HEAD":
            raw += body
        for piece in (raw[:6], raw[6:13], raw[13:]):
            self.wfile.write(piece)
            time.sleep(SPLIT_PAUSE)

    def _iis(self, sub: str) -> None:
        code, reason, heading, summary, module, handler, cause = IIS_PAGES[sub]
        page = IIS_PAGE.format(sub=sub, heading=heading, summary=summary, module=module,
                               handler=handler, cause=cause,
                               host=self.headers.get("Host", "localhost"), uri=self.path)
        body = page.encode("latin-1")
        headers = [("Content-Type", "text/html")]
        encoding = self._accepted_encoding()
        if encoding == "gzip":
            body = gzip.compress(body, mtime=0)  # mtime 0: same bytes every run
            headers.append(("Content-Encoding", "gzip"))
        elif encoding == "deflate":
            body = zlib.compress(body)  # RFC 9110 "deflate" is the zlib format
            headers.append(("Content-Encoding", "deflate"))
        headers.append(("Vary", "Accept-Encoding"))
        self._send(code, reason, headers + list(IIS_HEADERS), body)


class DualStackServer(ThreadingHTTPServer):
    """Listens on [::] with IPV6_V6ONLY off, so 127.0.0.1 and ::1 both work."""

    address_family = socket.AF_INET6
    daemon_threads = True
    log_file = None

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class NoDelayHandler(Handler):
    def setup(self):
        super().setup()
        # Small writes must leave as separate segments (split-line cases).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def serve(port: int, bind: str = "::", log_path: str | None = None) -> DualStackServer:
    """Start the server in a daemon thread and return it (call .shutdown())."""
    server = DualStackServer((bind, port), NoDelayHandler)
    if log_path:
        server.log_file = open(log_path, "a", encoding="utf-8")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Sample upstream app server (see the route list at the top of this file).",
        epilog="example: python3 samples/upstream.py --port 18080")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="::", help="address; default [::] (dual stack)")
    parser.add_argument("--log", help="append an access log to this file")
    args = parser.parse_args(argv)
    server = DualStackServer((args.bind, args.port), NoDelayHandler)
    if args.log:
        server.log_file = open(args.log, "a", encoding="utf-8")
    print(f"listening on [{args.bind}]:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
