#!/usr/bin/env python3
# Benchmark: `analyzer analyze` against `tshark -q -z http,stat,` on the same
# capture of real HTTP traffic, in one run.
#
# The capture (cached under benchmarks/data/, gitignored, as
# <profile>_<N>.pcap) is recorded when missing: nginx serves files to wrk
# while tcpdump records the port with `-c N`, so the file holds exactly N
# packets (checked with capinfos); default snaplen, because the analyzer
# needs whole headers.  Two traffic profiles:
#
#   web   (default) what a real network carries: a loopback shaped like
#         Ethernet (MTU 1500, no segmentation offload, so every frame is at
#         most 1514 bytes, as tcpdump sees on a NIC; RPS so that segments
#         are not reordered) and a site whose files follow web-like sizes
#         (HTML tens of KB, scripts and images up to ~300 KB, ~1 KB gzipped
#         JSON API replies, revalidations answered 304, a few 404 and a 301).
#         A response spans several segments: ~22 packets per HTTP exchange.
#   tiny  the worst case for a per-message dissector: bodies of tens of
#         bytes on the host loopback (MTU 65536), so every 2 packets carry a
#         whole exchange and nearly every packet holds an HTTP head.
#   api   a REST service on the host loopback at its own MTU, as service-mesh
#         sidecars and localhost clients see it: bodies of 0-2 KB (JSON
#         gzipped on the fly, so chunked), a weighted mix of 200, 204, 301,
#         304, 403, 404, 500 (some closing the connection) and 502 from a
#         dead upstream, to wrk keep-alive connections, one pipelining wrk
#         and curl loops that open a connection per request (`Connection:
#         close` and HTTP/1.0).  ~2.3 packets per response; 2 M packets by
#         default.
#
# The web profile records inside a private network namespace (`ip netns`),
# whose own lo gets the Ethernet shape, so the host's lo -- and whatever else
# uses it meanwhile -- is never touched; `--host-lo` records on the host's lo
# instead, changing its MTU for the recording and restoring it in a finally
# block (also on Ctrl-C or SIGTERM).
#
# Each tool runs in a fresh child process.  Figures per run: wall time,
# packets/s, CPU time (user+sys), peak RSS of the largest process (the
# child's ru_maxrss from wait4) and peak RSS of the whole process tree
# (sampled from /proc every SAMPLE_EVERY seconds, which matters only when the
# analyzer runs worker processes).  The ratio line is tshark / analyzer.  As a
# sanity check the analyzer's HTTP rows in events.csv are counted per code
# and set against the per-code counts in tshark's http,stat table (free: it
# is the output being timed).
#
#   python3 benchmarks/bench.py                      # web, 1 M packets
#   python3 benchmarks/bench.py --profile tiny --packets 20000 --double --json
#   python3 benchmarks/bench.py --profile api        # 2 M packets
#
# Limits: Linux only (/proc, wait4, tcpdump on lo, ip netns); building a
# capture needs root, nginx, wrk, tcpdump and iproute2 (api: curl too), and
# the clients run flat out, so how the api capture divides between them
# depends on the machine (its .json says what it holds); measuring needs only
# tshark and the analyzer.  The tree RSS is sampled, so a peak shorter than
# SAMPLE_EVERY can be missed; ru_maxrss is exact but per process.  wrk runs
# flat out, so loopback ACK timing is not a WAN's (fewer, stretched ACKs).
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from email.utils import formatdate
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
sys.path.insert(0, str(REPO))

from samples.capture import free_port  # noqa: E402
from samples.make_http import STATIC_MTIME, RawClient, nginx_server, stop_process  # noqa: E402

SAMPLE_EVERY = 0.05          # seconds between /proc RSS samples of a process tree
TCPDUMP_BUFFER_KB = 256 * 1024  # -B: a large kernel buffer, so tcpdump drops nothing
WARMUP_PACKETS = 2000        # untimed run of each tool before measuring
MIN_RATE = 2000              # packets/s below which building is considered stuck
ETHERNET_MTU = 1500          # RFC 894 Ethernet payload; frames of at most 1514 bytes on the wire
PROFILES = ("web", "tiny", "api")
DEFAULT_PACKETS = {"web": 1_000_000, "tiny": 1_000_000, "api": 2_000_000}  # capture size without --packets


# -- profile "tiny": small bodies, one exchange per 2 packets ----------------------------------

TINY_CONNECTIONS = 4         # few connections: loopback stays below tcpdump's drop point
TINY_THREADS = 1

# Small static files: bodies of tens to hundreds of bytes.
TINY_FILES = {
    "static/index.html": b"<!DOCTYPE html>\n<html><head><title>bench</title></head>"
                         b"<body><p>small page for the benchmark</p></body></html>\n",
    "static/a.txt": b"plain text file\n",
    "static/style.css": b"body { font-family: sans-serif; }\n",
    "static/data.json": b'{"items": [1, 2, 3], "ok": true}\n',
}

# The request mix wrk cycles through: mostly 200s, with 304, 404, 301, 204
# and 418.  No HEAD: wrk's parser does not know a HEAD response has no body.
TINY_MIX = [
    ("/static/index.html", ""),
    ("/static/a.txt", ""),
    ("/static/style.css", ""),
    ("/static/data.json", ""),
    ("/static/index.html", ""),
    ("/static/a.txt", ""),
    ("/static/missing.html", ""),
    ("/static/index.html", "If-None-Match"),
    ("/moved", ""),
    ("/nothing", ""),
    ("/teapot", ""),
    ("/static/data.json", ""),
]


# -- profile "web": a site with web-like sizes, on an Ethernet-shaped loopback ----------------

WEB_CONNECTIONS = 8          # a few, like the 6 per host a browser opens
WEB_THREADS = 2
WEB_HOST = "www.example.test"

# Files of the site (path under the root: body bytes).  Sizes are transfer
# sizes in the ranges the HTTP Archive reports for a median page: HTML tens of
# KB, one big vendor bundle and one big hero image of a few hundred KB, many
# images and scripts of 2-70 KB.
WEB_FILES = {
    "index.html": 31_200,
    "products.html": 44_800,
    "about.html": 22_400,
    "blog/2023/11/release-notes.html": 38_500,
    "assets/css/site.css": 52_300,
    "assets/css/print.css": 5_100,
    "assets/js/vendor.js": 148_000,
    "assets/js/app.js": 63_500,
    "assets/js/consent.js": 12_800,
    "assets/fonts/inter-400.woff2": 31_400,
    "favicon.ico": 4_286,
    "assets/img/logo.svg": 2_300,
    "assets/img/hero.jpg": 286_000,
    "assets/img/product-1.jpg": 24_600,
    "assets/img/product-2.jpg": 18_300,
    "assets/img/product-3.jpg": 41_200,
    "assets/img/product-4.jpg": 9_800,
    "assets/img/product-5.jpg": 67_500,
    "assets/img/product-6.jpg": 32_100,
    "assets/img/team.webp": 104_000,
    "assets/img/icon-cart.png": 2_100,
    "assets/img/avatar.png": 7_900,
}

# JSON API replies (name under /api/v1/: items), 0.6-4 KB of JSON.  nginx
# gzips them on the fly, so they go out chunked, 0.3-1.4 KB on the wire, as
# dynamic APIs do.
WEB_API = {"session": 8, "cart": 14, "products": 60, "recommendations": 24, "notifications": 16}

# The request cycle: three page visits as a browser makes them (page, then
# its subresources, then API calls).  The second and third visits revalidate
# what the first cached (If-None-Match / If-Modified-Since: 304); a stale
# link and two scanner probes give 404s, a moved page a 301.
#   (path, condition) with condition "", "etag" or "since"
WEB_VISITS = [
    [("/index.html", ""), ("/assets/css/site.css", ""), ("/assets/js/vendor.js", ""),
     ("/assets/js/app.js", ""), ("/assets/js/consent.js", ""), ("/assets/fonts/inter-400.woff2", ""),
     ("/assets/img/logo.svg", ""), ("/assets/img/hero.jpg", ""), ("/assets/img/product-1.jpg", ""),
     ("/assets/img/product-2.jpg", ""), ("/assets/img/product-3.jpg", ""), ("/favicon.ico", ""),
     ("/api/v1/session", ""), ("/api/v1/cart", ""), ("/api/v1/recommendations", "")],
    [("/shop", ""), ("/products.html", ""), ("/assets/css/site.css", "etag"),
     ("/assets/js/vendor.js", "etag"), ("/assets/js/app.js", "etag"),
     ("/assets/fonts/inter-400.woff2", "since"), ("/assets/img/logo.svg", "since"),
     ("/assets/img/product-1.jpg", "etag"), ("/assets/img/product-4.jpg", ""),
     ("/assets/img/product-5.jpg", ""), ("/assets/img/product-6.jpg", ""),
     ("/assets/img/icon-cart.png", ""), ("/assets/img/banner-old.png", ""),
     ("/api/v1/products", ""), ("/api/v1/cart", ""), ("/api/v1/notifications", "")],
    [("/about.html", ""), ("/assets/css/site.css", "etag"), ("/assets/css/print.css", ""),
     ("/assets/js/vendor.js", "etag"), ("/assets/js/app.js", "since"), ("/assets/img/team.webp", ""),
     ("/assets/img/avatar.png", ""), ("/api/v1/session", ""), ("/api/v1/notifications", ""),
     ("/blog/2023/11/release-notes.html", ""), ("/assets/img/hero.jpg", "etag"),
     ("/wp-login.php", ""), ("/.env", ""), ("/api/v1/notifications", "")],
]

WEB_ACCEPT = {  # what Chrome sends per destination
    "html": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "css": "text/css,*/*;q=0.1",
    "img": "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
    "api": "application/json, text/plain, */*",
    "other": "*/*",
}
WEB_USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/119.0.0.0 Safari/537.36")
WEB_COOKIE = "sid=6f1c2a9e4b7d4f0e8a3c5b2d1e0f9a8b; consent=analytics%3D0%26ads%3D0; theme=light"

# nginx's configuration for the web and api profiles: one frame, a server
# block per profile (@SERVER@); @NAME@ are filled in by site_server.
NGINX_CONF = """# generated by benchmarks/bench.py (profile "@PROFILE@"); @NAME@ are filled in
daemon off;
master_process on;
worker_processes 1;
user root;
pid @PREFIX@/nginx.pid;
error_log @PREFIX@/error.log @LOG_LEVEL@;

events {
    worker_connections 1024;
}

http {
    access_log off;
    client_body_temp_path @PREFIX@/tmp/body;
    proxy_temp_path @PREFIX@/tmp/proxy;
    fastcgi_temp_path @PREFIX@/tmp/fastcgi;
    uwsgi_temp_path @PREFIX@/tmp/uwsgi;
    scgi_temp_path @PREFIX@/tmp/scgi;

    server_tokens off;
    default_type application/octet-stream;
    types {
        text/html              html;
        text/plain             txt;
        text/css               css;
        application/javascript js;
        application/json       json;
        image/svg+xml          svg;
        image/jpeg             jpg;
        image/png              png;
        image/webp             webp;
        image/x-icon           ico;
        font/woff2             woff2;
    }
    keepalive_timeout 75s;
    keepalive_requests 100000;  # wrk connections live for the whole recording
    sendfile off;               # keep response segments the same on every kernel
    etag on;

@SERVER@
}
"""

# The body of a location of JSON replies (both profiles' APIs): files of
# the root under <uri>.json, gzipped on the fly, so they go out chunked.
JSON_REPLIES = """            gzip on;            # dynamic compression: chunked replies
            gzip_types application/json;
            gzip_min_length 0;
            add_header Cache-Control "no-store";
            try_files $uri.json =404;"""

WEB_SERVER = """    server {
        listen 127.0.0.1:@PORT@;
        server_name @HOST@;
        root @PREFIX@/www;

        location /assets/ {
            add_header Cache-Control "public, max-age=31536000, immutable";
        }
        location /api/ {
@JSON_REPLIES@
        }
        location = /shop { return 301 /products.html; }
    }""".replace("@JSON_REPLIES@", JSON_REPLIES)


# -- profile "api": a REST service on the host loopback, many small responses -----------------

API_HOST = "api.example.test"
API_CONNECTIONS = 4          # keep-alive wrk: as few as tiny's, so tcpdump keeps up
API_PIPELINE_CONNECTIONS = 1  # the pipelining wrk beside it
API_PIPELINE_DEPTH = 8       # requests a pipelined connection sends before reading
# Pause of the pipelining wrk before each batch: flat out, one connection of
# 8-deep batches answers more than the 4 keep-alive ones together; paced, it
# carries a minority (~1 in 10 responses on 2 vCPUs), as pipelining clients do.
API_PIPELINE_PAUSE_MS = 5
API_USER_AGENT = "okhttp/4.12.0"
API_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiIsInNjb3BlIjoiYXBpIn0.c2lnbmF0dXJlLW9mLXRoZS1iZW5jaA"
API_SEED = "api"             # the order of the weighted cycle: same on every build

# Static files (path under the root: body bytes), 0.1-2 KB with Content-Length;
# their ETag and Last-Modified are known (STATIC_MTIME), so revalidations get 304.
API_STATIC = {"assets/config.js": 1_150, "assets/icon.svg": 620, "robots.txt": 68}

# JSON endpoints (name under /v1/: items), 0.1-2 KB of JSON, gzipped on the fly
# for clients that accept it: chunked, as dynamic APIs answer.
API_JSON = {"users/me": 5, "items": 26, "orders/recent": 17, "status": 0}

# The weighted mix: (path, condition, code nginx gives it, weight per 100
# requests).  Condition "" or a validator ("etag", "since", see validator()).
# nginx closes the connection after its own 500 page (/v1/export: see
# API_SERVER), not after a 500 with a body of ours (/v1/reports).
API_MIX = [
    ("/v1/users/me", "", 200, 20), ("/v1/items?page=2", "", 200, 10), ("/v1/orders/recent", "", 200, 8),
    ("/v1/status", "", 200, 8), ("/v1/beacon", "", 200, 4), ("/assets/config.js", "", 200, 6),
    ("/assets/icon.svg", "", 200, 4), ("/robots.txt", "", 200, 2),
    ("/v1/heartbeat", "", 204, 8),
    ("/v1/user", "", 301, 3),
    ("/assets/config.js", "etag", 304, 8), ("/assets/icon.svg", "since", 304, 4),
    ("/v1/admin/users", "", 403, 3),
    ("/v1/users/0", "", 404, 4), ("/favicon.ico", "", 404, 2),
    ("/v1/reports", "", 500, 3), ("/v1/export", "", 500, 1),
    ("/v1/payments", "", 502, 2),
]
API_CLOSING = {"/v1/export"}  # kept out of the pipelined run: a close would drop the requests behind it

# curl clients that open a connection per request (nginx closes after each):
# one loop runs them in turn, each fetching every path of the mix once per
# invocation.
API_CURL_CLIENTS = (["-H", "Connection: close", "-H", "Accept-Encoding: gzip"], ["--http1.0"])

API_SERVER = """    server {
        listen 127.0.0.1:@PORT@;
        server_name @HOST@;
        root @PREFIX@/www;
        log_not_found off;      # 404s are part of the mix, not news

        location /v1/ {
@JSON_REPLIES@
        }
        location = /v1/beacon    { return 200 ""; }
        location = /v1/heartbeat { return 204; }
        location = /v1/user      { return 301 /v1/users/me; }
        location /v1/admin/      { return 403; }
        # A 500 with a body of ours keeps the connection (ngx_http_send_response);
        # nginx's own 500 page goes through ngx_http_special_response_handler,
        # which clears keep-alive for a 500: Connection: close, then FIN.
        location = /v1/reports   { return 500 '{"error": "internal", "retry": true}\\n'; }
        location = /v1/export    { return 500; }
        # Nothing listens on the upstream port: connect() refused, 502.
        location = /v1/payments  { proxy_pass http://127.0.0.1:@DEAD_PORT@; }
    }""".replace("@JSON_REPLIES@", JSON_REPLIES)

WRK_LUA = """-- generated by benchmarks/bench.py: cycle through a fixed request mix, %(depth)d at a time
-- (more than one: sent back to back before the responses are read, pipelined)
local requests = {%(requests)s}
local depth = %(depth)d
local n = 0
request = function()
  local batch = {}
  for i = 1, depth do
    n = n + 1
    batch[i] = requests[((n - 1) %% #requests) + 1]
  end
  return table.concat(batch)
end
%(delay)s"""

WORDS = ("the of and to in is for on with as by at from that this are be or it an was we can "
         "product price cart order shipping account session stock item review delivery size "
         "colour return policy offer update release notes feature support").split()


def tiny_requests() -> list[str]:
    etag = '"%x-%x"' % (STATIC_MTIME, len(TINY_FILES["static/index.html"]))
    requests = []
    for path, kind in TINY_MIX:
        extra = f"If-None-Match: {etag}\r\n" if kind == "If-None-Match" else ""
        requests.append(f"GET {path} HTTP/1.1\r\nHost: bench.example.test\r\n{extra}\r\n")
    return requests


def filler(rng: random.Random, size: int, line: str) -> str:
    """`size` characters of whole `line`s (a format with {w}/{n} fields), padded with spaces.

    Whole lines, so the markup stays well-formed: tshark's XML dissector
    flags a tag cut in half.
    """
    parts, total = [], 0
    while True:
        piece = line.format(w=" ".join(rng.choices(WORDS, k=rng.randint(4, 12))), n=rng.randint(1, 9999))
        if total + len(piece) > size:
            return "".join(parts) + " " * (size - total)
        parts.append(piece)
        total += len(piece)


def web_body(path: str, size: int) -> bytes:
    """A body of exactly `size` bytes that looks like its type; same bytes on every build."""
    rng = random.Random(path)  # a str seed is hashed with SHA-512: stable across runs
    ext = path.rsplit(".", 1)[-1]
    if ext == "html":
        head = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{path}</title>"
                "<link rel=\"stylesheet\" href=\"/assets/css/site.css\"></head>\n<body>\n")
        tail = "</body></html>\n"
        text = head + filler(rng, size - len(head) - len(tail), "<p class=\"c{n}\">{w}</p>\n") + tail
    elif ext == "css":
        text = filler(rng, size, ".c{n} {{ margin: 0 {n}px; font: 14px/1.4 sans-serif; }} /* {w} */\n")
    elif ext == "js":
        text = filler(rng, size, "function f{n}(a){{return a+{n}}}// {w}\n")
    elif ext == "txt":
        text = filler(rng, size, "# {w}\n")
    elif ext == "svg":
        head, tail = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 100 100\">\n", "</svg>\n"
        text = head + filler(rng, size - len(head) - len(tail), "<path d=\"M{n} 0L0 {n}Z\"/>\n") + tail
    else:
        return binary_body(ext, size, rng)
    return text.encode("ascii")


def binary_body(ext: str, size: int, rng: random.Random) -> bytes:
    """Images and fonts: random (incompressible) data in the format's framing.

    The framing matters: tshark hands a body to its image dissector, and one
    that throws on a malformed PNG also loses the http,stat entry of its
    response.
    """
    if ext == "png":  # signature, IHDR, one IDAT, IEND; every chunk with its CRC
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
        fixed = 8 + len(ihdr) + 12 + 12
        return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", rng.randbytes(size - fixed)) + chunk(b"IEND", b"")
    if ext == "jpg":  # SOI, APP0 JFIF, SOS, entropy-coded data (0xFF stuffed), EOI
        head = (b"\xff\xd8" + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
                + b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00")
        data = rng.randbytes(size - len(head) - 2).replace(b"\xff", b"\xfe")
        return head + data + b"\xff\xd9"
    if ext == "webp":  # RIFF container holding one VP8 chunk
        data = rng.randbytes(size - 20)
        return b"RIFF" + struct.pack("<I", size - 8) + b"WEBPVP8 " + struct.pack("<I", len(data)) + data
    magic = {"woff2": b"wOF2\x00\x01\x00\x00", "ico": b"\x00\x00\x01\x00\x01\x00"}[ext]
    return magic + rng.randbytes(size - len(magic))


def web_api_body(name: str, items: int) -> bytes:
    rng = random.Random(name)
    rows = [{"id": rng.randint(1000, 99999), "name": " ".join(rng.choices(WORDS, k=3)),
             "price": round(rng.uniform(1, 500), 2), "stock": rng.randint(0, 40)} for _ in range(items)]
    return json.dumps({"status": "ok", "endpoint": name, "items": rows}).encode() + b"\n"


def web_site() -> dict[str, bytes]:
    """Every file the web profile's nginx serves, by path under its root."""
    site = {path: web_body(path, size) for path, size in WEB_FILES.items()}
    site.update({f"api/v1/{name}.json": web_api_body(name, items) for name, items in WEB_API.items()})
    return site


def web_requests() -> list[str]:
    """The request cycle as raw HTTP/1.1 requests, headers in Chrome's order (no Sec-Fetch-*)."""
    requests = []
    for number, visit in enumerate(WEB_VISITS):
        page = visit[0][0] if visit[0][0].endswith(".html") else visit[1][0]
        for path, condition in visit:
            kind = ("html" if path.endswith(".html") or path == "/shop" else
                    "css" if path.endswith(".css") else
                    "img" if path.rsplit(".", 1)[-1] in ("jpg", "png", "webp", "svg", "ico") else
                    "api" if path.startswith("/api/") else "other")
            lines = [f"GET {path} HTTP/1.1", f"Host: {WEB_HOST}", "Connection: keep-alive",
                     f"User-Agent: {WEB_USER_AGENT}", f"Accept: {WEB_ACCEPT[kind]}"]
            if kind != "html" or number:
                lines.append(f"Referer: http://{WEB_HOST}{page}")
            lines += ["Accept-Encoding: gzip, deflate, br", "Accept-Language: en-GB,en;q=0.9",
                      f"Cookie: {WEB_COOKIE}"]
            if condition:
                lines.append(validator(condition, WEB_FILES[path.lstrip("/")]))
            requests.append("\r\n".join(lines) + "\r\n\r\n")
    return requests


def validator(condition: str, size: int) -> str:
    """The header of a conditional request for a file of `size` bytes stamped STATIC_MTIME: nginx answers 304.

    "etag": If-None-Match with nginx's ETag, "<mtime hex>-<size hex>"
    (ngx_http_set_etag); "since": If-Modified-Since its Last-Modified.
    """
    if condition == "etag":
        return 'If-None-Match: "%x-%x"' % (STATIC_MTIME, size)
    return f"If-Modified-Since: {formatdate(STATIC_MTIME, usegmt=True)}"


def web_expected_codes() -> Counter:
    """Status codes one request cycle should get: a check on the table above."""
    codes: Counter = Counter()
    for visit in WEB_VISITS:
        for path, condition in visit:
            name = path.lstrip("/")
            known = name in WEB_FILES or (name.startswith("api/v1/") and name[7:] in WEB_API)
            codes[301 if path == "/shop" else 304 if condition else 200 if known else 404] += 1
    return codes


def api_site() -> dict[str, bytes]:
    """Every file the api profile's nginx serves, by path under its root."""
    site = {rel: web_body(rel, size) for rel, size in API_STATIC.items()}
    site.update({f"v1/{name}.json": web_api_body(name, items) for name, items in API_JSON.items()})
    return site


def api_cycle(pipelined: bool = False) -> list[tuple[str, str, int]]:
    """(path, condition, code) of the weighted mix: each entry `weight` times, in a fixed shuffled order.

    The pipelined run leaves out the requests nginx closes the connection after.
    """
    cycle = [(path, condition, code) for path, condition, code, weight in API_MIX for _ in range(weight)
             if not (pipelined and path in API_CLOSING)]
    random.Random(API_SEED).shuffle(cycle)
    return cycle


def api_request(path: str, condition: str) -> str:
    """One request of an API client (a mobile app's HTTP library): JSON, gzip, a bearer token."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {API_HOST}", f"User-Agent: {API_USER_AGENT}",
             "Accept: application/json", "Accept-Encoding: gzip", f"Authorization: Bearer {API_TOKEN}"]
    if condition:
        lines.append(validator(condition, API_STATIC[path.lstrip("/")]))
    return "\r\n".join(lines) + "\r\n\r\n"


def api_expected_codes(pipelined: bool = False) -> Counter:
    """Status codes one cycle of the mix should get."""
    return Counter(code for _, _, code in api_cycle(pipelined))


def check_codes(port: int, transfers: list[tuple[str, str, int]]) -> None:
    """Send each distinct request of the mix once, before recording: nginx must answer as API_MIX says.

    A code other than the table's, or a closing request after which nginx
    keeps the connection open (or a keep-alive one it closes), stops the
    build: the capture would not hold the mix described.
    """
    for path, condition, code in sorted(set(transfers)):
        client = RawClient("127.0.0.1", port)
        try:
            client.send(api_request(path, condition).encode())
            response = client.read_head()
            if response is not None:
                client.read_body("GET", response)
            closes = response is not None and "close" in response.header("Connection").lower()
            if closes:  # and the FIN follows (no more bytes before the client's timeout)
                try:
                    closes = client.read_head() is None
                except TimeoutError:
                    closes = False
        finally:
            client.close()
        got = response.code if response else None
        if got != code or closes != (path in API_CLOSING):
            raise SystemExit(f"bench.py: nginx answers GET {path} ({condition or 'plain'}) with {got}"
                             f"{', closing' if closes else ''}; the api mix expects {code}"
                             f"{', closing' if path in API_CLOSING else ''}")


# -- building the capture -------------------------------------------------------------

def count_packets(path: Path) -> int:
    """Packets in a classic pcap file (our own reader: no tool needed)."""
    with path.open("rb") as handle:
        header = handle.read(24)
        if len(header) < 24:
            return 0
        endian = "<" if header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        count = 0
        while True:
            record = handle.read(16)
            if len(record) < 16:
                return count
            caplen = struct.unpack(endian + "I", record[8:12])[0]
            handle.seek(caplen, os.SEEK_CUR)
            count += 1


def capinfos_packets(path: Path) -> int:
    """Packets in a capture, as Wireshark's capinfos counts them (our reader without it)."""
    if shutil.which("capinfos") is None:
        return count_packets(path)
    out = subprocess.run(["capinfos", "-T", "-r", "-M", "-c", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().split("\t")[-1])


def wrk_command(workdir: Path, name: str, requests: list[str], threads: int, connections: int, port: int,
                depth: int = 1, delay_ms: int = 0) -> list[str]:
    """wrk cycling through `requests` on keep-alive connections, `depth` requests at a time on each.

    `delay_ms`: a pause before each send (of `depth` requests), so that this
    client does not take the server from the others.
    """
    script = workdir / f"{name}.lua"
    # JSON string escapes (\r, \n, \") are Lua escapes too; the requests are ASCII.
    # wrk waits delay() ms before each send when the script defines it (not at all otherwise).
    pause = f"delay = function() return {delay_ms} end\n" if delay_ms else ""
    script.write_text(WRK_LUA % {"requests": ", ".join(json.dumps(request) for request in requests),
                                 "depth": depth, "delay": pause})
    return ["wrk", "-t", str(threads), "-c", str(connections), "-d", "24h", "-s", str(script),
            f"http://127.0.0.1:{port}/"]


def curl_loop(port: int, paths: list[str], clients: tuple[list[str], ...]) -> list[str]:
    """A shell loop running curl over every path once per client's flags, in turn, until it is stopped.

    One -o per URL: curl's -o applies to one URL.  sh exits on SIGINT once
    the running curl is done (a few ms: each URL is a new connection on lo).
    """
    urls = [arg for path in paths for arg in ("-o", "/dev/null", f"http://127.0.0.1:{port}{path}")]
    runs = [shlex.join(["curl", "-s", "-H", f"Host: {API_HOST}", *flags, *urls]) for flags in clients]
    return ["sh", "-c", f"while :; do {'; '.join(runs)}; done"]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench.py: {shlex.join(cmd)} failed: {done.stderr.strip()[-300:]}")
    return done


RPS_CPUS = "/sys/class/net/lo/queues/rx-0/rps_cpus"


@contextlib.contextmanager
def ethernet_loopback(host_lo: bool):
    """A loopback shaped like Ethernet for the block; yields the command prefix that runs a tool on it.

    MTU 1500 alone is not enough: lo does segmentation offload, so TCP hands
    it (and tcpdump sees) up to 64 KB at once.  gso_max_segs 1 makes every
    skb one segment, as a NIC's wire carries them.  And lo queues a packet
    on the backlog of the CPU that sends it: a segment sent by nginx's
    sendmsg on one CPU and the next one sent from the ACK's softirq on the
    other land on two queues and arrive out of order (~0.5 % of the packets,
    each followed by a fast retransmit; tcpdump on lo records the receive
    side).  RPS over all CPUs steers each flow to one queue, by its hash, so
    each direction stays in order, as on a quiet LAN.
    """
    shape = ["mtu", str(ETHERNET_MTU), "gso_max_size", str(ETHERNET_MTU), "gso_max_segs", "1"]
    rps = f"{sum(1 << cpu for cpu in os.sched_getaffinity(0)):x}"
    if not host_lo:
        name = f"bench-{os.getpid()}"
        run(["ip", "netns", "add", name])
        try:
            prefix = ["ip", "netns", "exec", name]
            run(["ip", "-n", name, "link", "set", "lo", *shape, "up"])
            run(prefix + ["sh", "-c", f"echo {rps} > {RPS_CPUS}"])  # the namespace's own /sys
            yield prefix
        finally:
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
        return
    before = json.loads(run(["ip", "-j", "-d", "link", "show", "lo"]).stdout)[0]
    saved = ["mtu", str(before["mtu"]), "gso_max_size", str(before["gso_max_size"]),
             "gso_max_segs", str(before["gso_max_segs"])]
    saved_rps = Path(RPS_CPUS).read_text().strip()
    print(f"bench.py: lo set to {' '.join(shape)} rps_cpus {rps} while recording "
          f"(was {' '.join(saved)} rps_cpus {saved_rps})", file=sys.stderr)
    try:
        run(["ip", "link", "set", "lo", *shape])
        Path(RPS_CPUS).write_text(rps + "\n")
        yield []
    finally:
        with contextlib.suppress(OSError):
            Path(RPS_CPUS).write_text(saved_rps + "\n")
        subprocess.run(["ip", "link", "set", "lo", *saved], check=False)


def wait_listening(prefix: list[str], port: int, timeout: float = 10.0) -> bool:
    """True once something accepts on 127.0.0.1:port (in the namespace of `prefix`)."""
    probe = ("import socket, sys, time\n"
             "end = time.monotonic() + float(sys.argv[2])\n"
             "while time.monotonic() < end:\n"
             "    with socket.socket() as s:\n"
             "        if s.connect_ex(('127.0.0.1', int(sys.argv[1]))) == 0: sys.exit(0)\n"
             "    time.sleep(0.05)\n"
             "sys.exit(1)\n")
    return subprocess.run(prefix + [sys.executable, "-c", probe, str(port), str(timeout)]).returncode == 0


@contextlib.contextmanager
def site_server(prefix: list[str], port: int, workdir: Path, site: dict[str, bytes], server: str, fill: dict):
    """nginx serving `site` (path under its root: bytes) with the `server` block on 127.0.0.1:port, for the block.

    `fill` gives the placeholders of the configuration beyond the prefix and
    port (PROFILE, LOG_LEVEL, HOST, DEAD_PORT...).
    """
    root = workdir / "nginx"
    for sub in ("tmp", "www"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for rel, content in site.items():
        path = root / "www" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (STATIC_MTIME, STATIC_MTIME))  # known ETag and Last-Modified
    conf = NGINX_CONF.replace("@SERVER@", server)
    for key, value in {"PREFIX": root, "PORT": port, **fill}.items():
        conf = conf.replace(f"@{key}@", str(value))
    leftover = re.search(r"^[^#\n]*(@[A-Z_]+@)", conf, re.MULTILINE)  # comments may name @NAME@
    if leftover:
        raise SystemExit(f"bench.py: nginx configuration: unfilled placeholder {leftover.group(1)}")
    (root / "nginx.conf").write_text(conf)
    proc = subprocess.Popen(prefix + ["nginx", "-c", str(root / "nginx.conf"), "-p", str(root),
                                      "-e", str(root / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_listening(prefix, port):
            log = root / "error.log"
            raise SystemExit("bench.py: nginx did not start: "
                             + (log.read_text(errors="replace")[-1000:] if log.exists() else "no error log"))
        yield port
    finally:
        stop_process(proc, signal.SIGQUIT)  # graceful: the worker finishes, then exits


def record(path: Path, packets: int, port: int, prefix: list[str], loads: list[list[str]]) -> dict:
    """Run tcpdump -c `packets` on the port while the `loads` (client commands) run; the server must be up."""
    with contextlib.ExitStack() as stack:
        dump = subprocess.Popen(
            prefix + ["tcpdump", "-i", "lo", "-n", "-B", str(TCPDUMP_BUFFER_KB), "-c", str(packets),
                      "-w", str(path), f"tcp port {port}"],
            stderr=subprocess.PIPE, text=True)
        stack.callback(stop, dump)
        lines: list[str] = []
        while True:  # tcpdump says "listening on" once its socket is ready
            line = dump.stderr.readline()
            lines.append(line)
            if "listening on" in line or not line:
                break
        drain = threading.Thread(target=lambda: lines.extend(dump.stderr), daemon=True)
        drain.start()
        for load in loads:
            stack.callback(stop, subprocess.Popen(prefix + load, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL))
        try:
            dump.wait(timeout=60 + packets / MIN_RATE)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"bench.py: tcpdump did not see {packets} packets in time") from None
        drain.join(timeout=5)
    stats = " ".join(lines)
    if dump.returncode != 0 or not path.exists():
        raise SystemExit(f"bench.py: tcpdump failed: {stats.strip()[-500:]}")
    dropped = re.search(r"(\d+) packets? dropped by kernel", stats)
    return {"dropped_by_kernel": int(dropped.group(1)) if dropped else None}


def build_capture(path: Path, profile: str, packets: int, host_lo: bool, port: int | None = None) -> dict:
    """Record `packets` packets of the profile's nginx + wrk (+ curl) traffic into `path`."""
    if os.geteuid() != 0:
        raise SystemExit(f"bench.py: {path} is missing and building it needs root (tcpdump, ip)")
    for tool in ("nginx", "wrk", "tcpdump", "ip") + (("curl",) if profile == "api" else ()):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench.py: building the capture needs {tool} "
                             "(apt-get install nginx-light wrk tcpdump iproute2 curl)")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            # The dead port (a proxy to it gets 502) is closed again: nothing listens there.
            port, dead = (port, port + 1) if port else (free_port(), free_port())
            prefix, loads, shape = start_profile(stack, profile, workdir, port, dead, host_lo)
            meta = record(partial, packets, port, prefix, loads)
        have = capinfos_packets(partial)
        if have < packets:
            raise SystemExit(f"bench.py: the recording holds {have} packets, not {packets}")
        if have > packets:  # tcpdump -c stops at N; trim anyway should a version overshoot
            trimmed = path.with_name(path.name + ".trim")
            run(["editcap", "-F", "pcap", "-r", str(partial), str(trimmed), f"1-{packets}"])
            trimmed.replace(partial)
        partial.chmod(0o644)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    meta.update({
        "profile": profile,
        "server_port": port,  # for tshark -d tcp.port==PORT,http (see benchmarks/README.md, "api")
        "packets": capinfos_packets(path),
        "bytes": path.stat().st_size,
        "build_seconds": round(time.monotonic() - started, 1),
        "loopback": ("host lo" if host_lo or profile != "web" else "lo of a private network namespace")
                    + (f", MTU {ETHERNET_MTU}, one segment per frame" if profile == "web" else ", MTU as found"),
        **shape,
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
    })
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def start_profile(stack: contextlib.ExitStack, profile: str, workdir: Path, port: int, dead: int,
                  host_lo: bool) -> tuple[list[str], list[list[str]], dict]:
    """Start the profile's server on `port` (stopped by `stack`); `dead` is a port nobody listens on.

    Returns the prefix that runs a tool beside it, the client commands to
    run while recording, and what the capture's .json says of the traffic.
    """
    def codes(counter: Counter) -> dict:
        return {str(code): n for code, n in sorted(counter.items())}

    if profile == "web":
        prefix = stack.enter_context(ethernet_loopback(host_lo))
        stack.enter_context(site_server(prefix, port, workdir, web_site(), WEB_SERVER,
                                        {"PROFILE": profile, "LOG_LEVEL": "warn", "HOST": WEB_HOST}))
        requests = web_requests()
        return prefix, [wrk_command(workdir, "mix", requests, WEB_THREADS, WEB_CONNECTIONS, port)], {
            "wrk": f"-t {WEB_THREADS} -c {WEB_CONNECTIONS}, keep-alive",
            "requests_per_cycle": len(requests),
            "codes_per_cycle": codes(web_expected_codes()),
            "files": {"/" + rel: len(body) for rel, body in web_site().items()},
        }
    if profile == "tiny":
        # nginx_server stamps every file with STATIC_MTIME, so the ETag is known.
        stack.enter_context(nginx_server(port, dead, dead, workdir, static=TINY_FILES, access_log=False))
        requests = tiny_requests()
        return [], [wrk_command(workdir, "mix", requests, TINY_THREADS, TINY_CONNECTIONS, port)], {
            "wrk": f"-t {TINY_THREADS} -c {TINY_CONNECTIONS}, keep-alive",
            "requests_per_cycle": len(requests),
            "mix": [path for path, _ in TINY_MIX],
        }
    # error_log crit: every 502 would log its refused connect() at level error.
    stack.enter_context(site_server([], port, workdir, api_site(), API_SERVER,
                                    {"PROFILE": profile, "LOG_LEVEL": "crit", "HOST": API_HOST, "DEAD_PORT": dead}))
    check_codes(port, api_cycle())
    keep_alive, pipelined = api_cycle(), api_cycle(pipelined=True)
    paths = sorted({path for path, _, _, _ in API_MIX})
    loads = [wrk_command(workdir, "mix", [api_request(path, condition) for path, condition, _ in keep_alive],
                         1, API_CONNECTIONS, port),
             wrk_command(workdir, "pipelined", [api_request(path, condition) for path, condition, _ in pipelined],
                         1, API_PIPELINE_CONNECTIONS, port, API_PIPELINE_DEPTH, API_PIPELINE_PAUSE_MS)]
    loads.append(curl_loop(port, paths, API_CURL_CLIENTS))
    return [], loads, {
        "wrk": f"-t 1 -c {API_CONNECTIONS}, keep-alive; -t 1 -c {API_PIPELINE_CONNECTIONS}, "
               f"{API_PIPELINE_DEPTH} requests pipelined every {API_PIPELINE_PAUSE_MS} ms",
        "curl": "one loop, in turn: " + "; ".join(shlex.join(["curl", *flags]) for flags in API_CURL_CLIENTS)
                + f"; {len(paths)} URLs an invocation, a connection each",
        "requests_per_cycle": len(keep_alive),
        "codes_per_cycle": codes(api_expected_codes()),
        "codes_per_pipelined_cycle": codes(api_expected_codes(pipelined=True)),
        "mix": [f"{path} {condition or '-'} {code} x{weight}" for path, condition, code, weight in API_MIX],
        "files": {"/" + rel: len(body) for rel, body in api_site().items()},
    }


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def capture_for(profile: str, packets: int, rebuild: bool, host_lo: bool,
                port: int | None = None) -> tuple[Path, dict]:
    path = DATA / f"{profile}_{packets}.pcap"
    if path.exists() and not rebuild:
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        have = meta.get("packets") if meta.get("bytes") == path.stat().st_size else None
        have = have or count_packets(path)
        if have >= packets:
            meta.update(profile=profile, packets=have, bytes=path.stat().st_size)
            return path, meta
    print(f"building {path.relative_to(REPO)} ({packets:,} packets, profile {profile})...", file=sys.stderr)
    return path, build_capture(path, profile, packets, host_lo, port)


# -- measuring -----------------------------------------------------------------------

def tree_rss_kb(root: int) -> int:
    """Resident set size of `root` and all its descendants, in KiB."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    todo += [int(child) for child in children.read().split()]
    return total


def measure(cmd: list[str], workdir: Path) -> dict:
    """Run cmd once in a fresh child; return time, CPU, RSS and its output."""
    out_path, err_path = workdir / "stdout", workdir / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(SAMPLE_EVERY):
                peak[0] = max(peak[0], tree_rss_kb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "tree_rss_mb": max(peak[0], usage.ru_maxrss) / 1024,
        "exit": proc.returncode,
        "stdout": out_path.read_text(errors="replace"),
        "stderr": err_path.read_text(errors="replace"),
    }


def tshark_codes(stat_output: str) -> Counter:
    """Per-code response counts from tshark's http,stat table."""
    codes: Counter = Counter()
    in_codes = False
    for line in stat_output.splitlines():
        if line.startswith("* "):
            in_codes = "Status Codes" in line
            continue
        match = re.match(r"^\s+(\d{3})\s.*?(\d+)\s*$", line)
        if in_codes and match:
            codes[int(match.group(1))] += int(match.group(2))
    return codes


def analyzer_codes(events: Path) -> Counter:
    codes: Counter = Counter()
    with events.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("protocol") == "http":
                with contextlib.suppress(ValueError):
                    codes[int(row["code"])] += 1
    return codes


def head_copy(path: Path, target: Path, packets: int) -> Path:
    """The first `packets` packets of a classic pcap, for warm-up runs."""
    with path.open("rb") as src, target.open("wb") as dst:
        header = src.read(24)
        dst.write(header)
        endian = "<" if header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        for _ in range(packets):
            record = src.read(16)
            if len(record) < 16:
                break
            dst.write(record + src.read(struct.unpack(endian + "I", record[8:12])[0]))
    return target


def best_of(cmd: list[str], repeat: int, workdir: Path) -> dict:
    runs = [measure(cmd, workdir) for _ in range(repeat)]
    best = min(runs, key=lambda run: run["wall_s"])
    best["maxrss_mb"] = max(run["maxrss_mb"] for run in runs)
    best["tree_rss_mb"] = max(run["tree_rss_mb"] for run in runs)
    return best


def bench_file(path: Path, packets: int, analyzer: list[str], repeat: int, jobs: list[str] = ()) -> dict:
    with path.open("rb") as handle:  # warm the page cache: both tools read from memory
        while handle.read(1 << 22):
            pass
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        workdir = Path(tmp)
        outdir = workdir / "out"
        # One untimed run of each tool on a small head of the file, so neither
        # pays for a cold start (libraries and plugins read from disk).
        small = head_copy(path, workdir / "warmup.pcap", WARMUP_PACKETS)
        measure(analyzer + ["analyze", str(small), "-o", str(workdir / "warmup")], workdir)
        if shutil.which("tshark"):
            measure(["tshark", "-q", "-n", "-r", str(small), "-z", "http,stat,"], workdir)
        cmd = analyzer + ["analyze", str(path), "-o", str(outdir), *jobs]
        run = best_of(cmd, repeat, workdir)
        events = outdir / "events.csv"
        run["codes"] = analyzer_codes(events) if events.exists() else None
        run["command"] = shlex.join(cmd)
        results["analyzer"] = run
        if shutil.which("tshark"):
            cmd = ["tshark", "-q", "-n", "-r", str(path), "-z", "http,stat,"]
            run = best_of(cmd, repeat, workdir)
            run["codes"] = tshark_codes(run["stdout"]) if run["exit"] == 0 else None
            run["command"] = shlex.join(cmd)
            results["tshark"] = run
    for run in results.values():
        run["packets_per_s"] = packets / run["wall_s"] if run["wall_s"] else 0.0
        run["events"] = sum(run["codes"].values()) if run["codes"] is not None else None
        run["ok"] = run["exit"] == 0 and run["codes"] is not None
        run["error"] = "" if run["ok"] else (run["stderr"].strip().splitlines() or ["no output"])[-1][:300]
        run["codes"] = {str(code): count for code, count in sorted((run["codes"] or {}).items())}
        del run["stdout"], run["stderr"]
    block = {"file": str(path), "packets": packets, "bytes": path.stat().st_size, "runs": results}
    a, t = results.get("analyzer"), results.get("tshark")
    # The traffic's shape, from the reference tool when it ran: what a "packet" is worth.
    responses = next((run["events"] for run in (t, a) if run and run["ok"] and run["events"]), None)
    if responses:
        block["packets_per_response"] = packets / responses
        block["bytes_per_response"] = block["bytes"] / responses
    if a and t and a["ok"] and t["ok"]:
        block["ratio"] = {
            "speed": t["wall_s"] / a["wall_s"],
            "rss": t["maxrss_mb"] / a["maxrss_mb"] if a["maxrss_mb"] else None,
        }
        differ = {code: (a["codes"].get(code, 0), t["codes"].get(code, 0))
                  for code in sorted(set(a["codes"]) | set(t["codes"]))
                  if a["codes"].get(code, 0) != t["codes"].get(code, 0)}
        block["codes_differ"] = {code: {"analyzer": x, "tshark": y} for code, (x, y) in differ.items()}
    return block


# -- output ------------------------------------------------------------------------------

def uptime() -> str:
    """`uptime`'s line (load averages over 1, 5, 15 minutes): how busy the machine was."""
    if shutil.which("uptime"):
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return "load average: " + ", ".join(f"{load:.2f}" for load in os.getloadavg())


def print_block(block: dict, meta: dict) -> None:
    size_mb = block["bytes"] / 1e6
    drops = meta.get("dropped_by_kernel")
    profile = meta.get("profile")
    print(f"\n{block['file']}: {block['packets']:,} packets, {size_mb:,.1f} MB"
          + (f", profile {profile}" if profile else "")
          + (f", {drops} dropped by kernel while recording" if drops else ""), flush=True)
    print(f"  {'tool':9} {'wall s':>8} {'packets/s':>11} {'cpu s':>8} {'RSS MB':>8} {'tree MB':>8} {'events':>9}")
    for tool, run in block["runs"].items():
        if not run["ok"]:
            print(f"  {tool:9} FAILED (exit {run['exit']}): {run['error']}")
            continue
        print(f"  {tool:9} {run['wall_s']:8.2f} {run['packets_per_s']:11,.0f} {run['cpu_s']:8.2f} "
              f"{run['maxrss_mb']:8.1f} {run['tree_rss_mb']:8.1f} {run['events']:9,}")
    if block.get("packets_per_response"):
        print(f"  {block['packets_per_response']:.1f} packets and "
              f"{block['bytes_per_response'] / 1000:,.1f} kB of capture per HTTP response")
    ratio = block.get("ratio")
    if ratio:
        rss = f"{ratio['rss']:.2f}" if ratio["rss"] else "n/a"
        print(f"  tshark/analyzer: wall time {ratio['speed']:.2f}x, peak RSS {rss}x  (above 1: analyzer better)")
        differ = block["codes_differ"]
        if differ:
            shown = ", ".join(f"{code}: {v['analyzer']} vs {v['tshark']}" for code, v in list(differ.items())[:8])
            print(f"  events per code differ (analyzer vs tshark): {shown}")
        else:
            print("  events per code: analyzer and tshark agree")


def exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: finally blocks restore lo, stop servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time `analyzer analyze` and `tshark -z http,stat,` on the same HTTP capture.",
        epilog="example: python3 benchmarks/bench.py --packets 50000 --profile tiny --double")
    parser.add_argument("--profile", choices=PROFILES, default="web",
                        help="traffic of the built capture: web (realistic, default), tiny (worst case) "
                             "or api (a REST service's small responses)")
    parser.add_argument("--packets", type=int,
                        help="capture size (default 1,000,000; api 2,000,000)")
    parser.add_argument("--double", action="store_true",
                        help="also measure a 2x capture (same profile) to show how RSS grows")
    parser.add_argument("--capture", type=Path, help="measure this capture instead of building one")
    parser.add_argument("--rebuild", action="store_true", help="record the capture again even if cached")
    parser.add_argument("--port", type=int,
                        help="record with nginx on this port (and PORT+1 as the dead upstream of the "
                             "api profile's 502s; default: free ports)")
    parser.add_argument("--host-lo", action="store_true",
                        help="web profile: record on the host's lo (its MTU is changed, then restored) "
                             "instead of a private network namespace")
    parser.add_argument("--analyzer", default=f"{sys.executable} -m analyzer",
                        help="analyzer command (default: %(default)s)")
    parser.add_argument("--jobs", type=int, help="pass --jobs N to the analyzer")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool; the fastest is kept (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = parser.parse_args(argv)
    if args.capture and args.double:
        parser.error("--double needs a capture built by this script (drop --capture)")
    if args.packets is None:
        args.packets = DEFAULT_PACKETS[args.profile]
    if args.packets < 1:
        parser.error("--packets must be at least 1")
    analyzer = shlex.split(args.analyzer)
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    signal.signal(signal.SIGHUP, exit_on_sigterm)

    if args.capture:
        if not args.capture.exists():
            parser.error(f"{args.capture}: no such file")
        path = args.capture.resolve()
        captures = [(path, {"packets": count_packets(path)})]
    else:
        sizes = [args.packets] + ([2 * args.packets] if args.double else [])
        captures = [capture_for(args.profile, size, args.rebuild, args.host_lo, args.port) for size in sizes]

    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"bench.py: warning: load average {load:.1f} on {os.cpu_count()} CPUs; "
              "other work will distort the timings", file=sys.stderr)
    before = uptime()
    if not args.json:
        print(f"before: {before}  ({os.cpu_count()} CPUs)", flush=True)
    blocks = []
    for path, meta in captures:
        packets = meta.get("packets") or count_packets(path)
        block = bench_file(path, packets, analyzer, args.repeat, jobs)
        block["capture"] = meta
        blocks.append(block)
        if not args.json:
            print_block(block, meta)
    after = uptime()
    document = {"tools": {"analyzer": shlex.join(analyzer),
                          "tshark": (subprocess.run(["tshark", "--version"], capture_output=True, text=True)
                                     .stdout.splitlines() or [""])[0] if shutil.which("tshark") else None},
                "profile": None if args.capture else args.profile,
                "cpus": os.cpu_count(), "load_before": round(load, 2),
                "uptime_before": before, "uptime_after": after, "files": blocks}
    if len(blocks) == 2:
        growth = {}
        for tool in blocks[0]["runs"]:
            small, large = blocks[0]["runs"][tool], blocks[1]["runs"].get(tool)
            if large and small["ok"] and large["ok"]:
                growth[tool] = {"rss": large["maxrss_mb"] / small["maxrss_mb"],
                                "wall": large["wall_s"] / small["wall_s"]}
        document["doubling"] = growth
        if not args.json:
            print("\nwhen the capture doubles: " + ", ".join(
                f"{tool} RSS x{g['rss']:.2f}, time x{g['wall']:.2f}" for tool, g in growth.items()))
    if args.json:
        json.dump(document, sys.stdout, indent=1)
        print()
    else:
        print(f"after: {after}")
    return 0 if all(run["ok"] for block in blocks for run in block["runs"].values()) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # servers stopped and lo restored on the way out
        print("bench.py: interrupted", file=sys.stderr)
        sys.exit(130)
