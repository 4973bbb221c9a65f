# `analyze -f BPF`: a capture filter applied to packets read from files, as
# tcpdump -r FILE EXPR does.
#
# The filter is compiled and run by libpcap itself (through ctypes:
# pcap_open_dead, pcap_compile, pcap_offline_filter), so the expression
# language and its meaning are exactly tcpdump's and Wireshark's capture
# filters -- no second BPF implementation.  One program per link type
# (compiling depends on it).  A packet left out still counts as a frame, so
# frame numbers stay those Wireshark shows for the unfiltered file.
#
# Limits: needs libpcap (installed with tcpdump/tshark); costs a C call per
# packet, so it is only in the loop when -f is given.  Filters see the bytes
# as captured: a packet cut by the snap length is tested on what was kept.
from __future__ import annotations

import ctypes
import ctypes.util

from analyzer.errors import MissingTool, UsageError

PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF  # pcap/pcap.h: broadcast tests then fail, as in tcpdump -r
SNAPLEN = 262144                   # tcpdump's default snap length


class _Program(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Header(ctypes.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


def _libpcap():
    name = ctypes.util.find_library("pcap")
    if name is None:
        raise MissingTool("-f needs libpcap (Debian: apt-get install libpcap0.8, or tcpdump)")
    lib = ctypes.CDLL(name)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Program), ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_offline_filter.argtypes = [ctypes.POINTER(_Program), ctypes.POINTER(_Header), ctypes.c_char_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    return lib


class PacketFilter:
    """keep(linktype, data, wirelen) -> bool for one BPF expression."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._lib = _libpcap()
        self._programs: dict[int, tuple] = {}
        self._header = _Header()
        self.compile(1)  # Ethernet: a syntax error shows before any file is read

    def compile(self, linktype: int):
        got = self._programs.get(linktype)
        if got is None:
            handle = self._lib.pcap_open_dead(linktype, SNAPLEN)
            program = _Program()
            if self._lib.pcap_compile(handle, ctypes.byref(program), self.expression.encode(), 1,
                                      PCAP_NETMASK_UNKNOWN) != 0:
                message = self._lib.pcap_geterr(handle).decode(errors="replace")
                self._lib.pcap_close(handle)
                raise UsageError(f"-f {self.expression!r}: {message}")
            got = self._programs[linktype] = (handle, program)
        return got

    def keep(self, linktype: int, data: bytes, wirelen: int) -> bool:
        program = self.compile(linktype)[1]
        header = self._header
        header.caplen = len(data)
        header.len = max(wirelen, len(data))
        return self._lib.pcap_offline_filter(ctypes.byref(program), ctypes.byref(header), data) != 0

    def close(self) -> None:
        for handle, program in self._programs.values():
            self._lib.pcap_freecode(ctypes.byref(program))
            self._lib.pcap_close(handle)
        self._programs.clear()
