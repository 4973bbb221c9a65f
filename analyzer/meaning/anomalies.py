# The anomaly policy: every anomaly name the code emits, what it means, how bad
# it is, and how many example rows of it anomalies.csv keeps.
#
# Strategy (Zeek's base/frameworks/notice/weird.zeek): dissectors and engines
# emit every occurrence; counting and sampling happen in one place (the flow
# table, the tshark engine), never in a dissector.  Counts in summary.json are
# exact; only the example rows are sampled.  A name missing from the table is
# still counted and sampled with the defaults (lookups never fail), and
# tests/test_anomalies.py fails so the table is completed.
#
# Sampling: the first KEEP_FIRST occurrences of a name keep their row, then one
# in SAMPLE_RATE.  Zeek's Weird::sampling_threshold is 25 and sampling_rate 1000
# (init-bare.zeek).  We keep more before sampling (1000, the rows per name the
# writer kept before this policy existed) because our rows are the evidence a
# user opens next to a status-code report, and 1000 rows of one name cost
# ~100 KB; Zeek's rate then bounds a flood to one row per thousand, so even
# 10 M unmasked frames write ~11 000 rows while their count stays exact.
from __future__ import annotations

from typing import NamedTuple

KEEP_FIRST = 1000     # rows kept per name before sampling (Zeek's threshold is 25, see above)
SAMPLE_RATE = 1000    # then one row in this many: Zeek Weird::sampling_rate

INFO, WARNING, ERROR = "info", "warning", "error"


class Policy(NamedTuple):
    severity: str
    en: str
    zh: str
    keep_first: int = KEEP_FIRST
    rate: int = SAMPLE_RATE


# name -> severity, English, Chinese[, keep_first, rate].  "error": the traffic
# breaks its protocol; "warning": our view of it is incomplete (capture gaps,
# limits) or it is unusual; "info": worth knowing, nothing is wrong.
_TABLE: dict[str, tuple] = {
    # -- HTTP ---------------------------------------------------------------
    "http_bad_request_line": (ERROR, "A client line where a request line should start is not one.",
                              "客户端在应为请求行的位置发送了无法识别的内容。"),
    "http_bad_status_line": (ERROR, "A server line that looks like a status line does not parse.",
                             "服务器发送的状态行格式不正确。"),
    "http_response_without_status_line": (ERROR, "The server sent data that is not an HTTP response.",
                                          "服务器发送的数据不是 HTTP 响应。"),
    "http_bad_chunk": (ERROR, "A chunked body has an unreadable chunk size or a missing CRLF.",
                       "分块传输的块大小无法解析或缺少 CRLF。"),
    "http_body_interrupted": (WARNING, "A message body ended before its announced length.",
                              "消息体在声明的长度之前结束。"),
    "http_gap_in_head": (WARNING, "Bytes missing from the capture inside a message head.",
                         "报文头部中有字节未被抓到。"),
    "http_incomplete_head_at_end": (WARNING, "The connection ended in the middle of a message head.",
                                    "连接在报文头部中途结束。"),
    "http_head_too_long": (WARNING, "A message head exceeded our 64 KiB limit and was cut.",
                           "报文头部超过 64 KiB 上限，被截断。"),
    "http_request_lost": (WARNING, "A response answers a request the capture did not contain.",
                          "响应对应的请求未出现在抓包中。"),
    "http_response_lost": (WARNING, "A request got no response before the connection ended.",
                           "请求在连接结束前未收到响应。"),
    "http_pairing_uncertain": (WARNING, "After lost packets, the ACKs leave more than one request this "
                               "response may answer (a pipelining client): paired in order, unsure.",
                               "丢包之后，ACK 仍无法确定该响应对应哪个请求（客户端使用流水线）：按顺序配对，结果不确定。"),
    "http_response_without_request": (ERROR, "A response arrived with no request waiting for it.",
                                      "收到响应时没有等待中的请求。"),
    "http_response_not_reported": (WARNING, "tshark saw a response it did not report a status for.",
                                   "tshark 看到了响应，但未给出状态码。"),
    "http_too_many_pending_requests": (WARNING, "More requests waited for a response than we track.",
                                       "等待响应的请求数量超过跟踪上限。"),
    "http_tunnel": (INFO, "The connection became a tunnel (CONNECT or an upgrade we do not decode).",
                    "连接转为隧道（CONNECT 或我们不解析的协议升级）。"),
    "http_upgrade_hold_limit": (WARNING, "Too many bytes followed an upgrade request before its answer.",
                                "升级请求得到答复前的后续数据超过保留上限。"),
    "http2_bad_status": (ERROR, "An HTTP/2 :status pseudo-header is not a three-digit code.",
                         "HTTP/2 的 :status 不是三位数字。"),
    # -- FTP ----------------------------------------------------------------
    "ftp_command_too_long": (WARNING, "A command line exceeded the line-length limit.",
                             "命令行超过行长度上限。"),
    "ftp_command_unknown": (INFO, "A command verb no FTP RFC defines.",
                            "FTP 规范中未定义的命令。"),
    "ftp_command_without_reply": (WARNING, "A command got no reply before the session moved on or ended.",
                                  "命令在会话继续或结束前未收到回复。"),
    "ftp_data_address_invalid": (ERROR, "A PORT/PASV/EPRT/EPSV address cannot be parsed.",
                                 "数据连接地址（PORT/PASV/EPRT/EPSV）无法解析。"),
    "ftp_gap": (WARNING, "Bytes missing from the capture on the control channel.",
                "控制连接中有字节未被抓到。"),
    "ftp_gap_fragment": (WARNING, "A partial line after a capture gap was dropped.",
                         "抓包缺口之后的不完整行被丢弃。"),
    "ftp_line_unterminated": (WARNING, "The channel ended inside a line without CRLF.",
                              "连接在一行未以 CRLF 结束时关闭。"),
    "ftp_reply_incomplete": (WARNING, "A multi-line reply never got its final line.",
                             "多行回复缺少最后一行。"),
    "ftp_reply_invalid_line": (ERROR, "Server text outside any reply.",
                               "服务器在回复之外发送了文本。"),
    "ftp_reply_malformed": (ERROR, "A server line that is not a valid reply (e.g. \"230_no_space\").",
                            "服务器的行不是有效回复（如 \"230_no_space\"）。"),
    "ftp_reply_too_long": (WARNING, "A reply line exceeded the line-length limit.",
                           "回复行超过行长度上限。"),
    "ftp_reply_too_many_lines": (WARNING, "A multi-line reply exceeded the line-count limit.",
                                 "多行回复超过行数上限。"),
    "ftp_reply_without_command": (ERROR, "A reply arrived with no command waiting for it.",
                                  "收到回复时没有等待中的命令。"),
    "ftp_tls_started": (INFO, "AUTH TLS succeeded: the rest of the control channel is encrypted.",
                        "AUTH TLS 成功，之后的控制连接已加密。"),
    "ftp_too_many_pending_commands": (WARNING, "More commands waited for a reply than we track.",
                                      "等待回复的命令数量超过跟踪上限。"),
    "ftp_unparsed_line": (WARNING, "A line seen before client and server could be told apart.",
                          "在能区分客户端与服务器之前出现的行。"),
    # -- WebSocket (RFC 6455) -----------------------------------------------------
    "websocket_unmasked_client_frame": (ERROR, "A client frame without a mask (RFC 6455 5.1).",
                                        "客户端帧未加掩码（RFC 6455 5.1）。"),
    "websocket_masked_server_frame": (ERROR, "A server frame with a mask (RFC 6455 5.1).",
                                      "服务器帧带有掩码（RFC 6455 5.1）。"),
    "websocket_reserved_opcode": (ERROR, "A frame with a reserved opcode (RFC 6455 5.2).",
                                  "帧使用了保留的操作码（RFC 6455 5.2）。"),
    "websocket_non_minimal_length": (ERROR, "A payload length not in its shortest encoding (RFC 6455 5.2).",
                                     "负载长度未使用最短编码（RFC 6455 5.2）。"),
    "websocket_length_msb_set": (ERROR, "A 64-bit payload length with its top bit set (RFC 6455 5.2).",
                                 "64 位负载长度的最高位被置位（RFC 6455 5.2）。"),
    "websocket_reserved_bits": (ERROR, "RSV bits set without an extension allowing them.",
                                "未经扩展协商却设置了 RSV 位。"),
    "websocket_fragmented_control_frame": (ERROR, "A control frame without FIN (RFC 6455 5.5).",
                                           "控制帧未设置 FIN（RFC 6455 5.5）。"),
    "websocket_control_frame_too_long": (ERROR, "A control frame payload over 125 bytes (RFC 6455 5.5).",
                                         "控制帧负载超过 125 字节（RFC 6455 5.5）。"),
    "websocket_frame_after_close": (ERROR, "A frame sent after its sender's close frame (RFC 6455 5.5.1).",
                                    "发送方在关闭帧之后又发送了帧（RFC 6455 5.5.1）。"),
    "websocket_unexpected_continuation": (ERROR, "A continuation frame with no message to continue.",
                                          "没有可延续的消息却收到延续帧。"),
    "websocket_data_frame_inside_fragmented_message": (ERROR, "A new data frame inside a fragmented message.",
                                                       "分片消息尚未结束时出现新的数据帧。"),
    "websocket_close_code_lost": (WARNING, "A close frame whose status code fell in a capture gap.",
                                  "关闭帧的状态码落在抓包缺口中。"),
    "websocket_gap_lost_framing": (WARNING, "A capture gap broke the frame boundaries; later frames unread.",
                                   "抓包缺口破坏了帧边界，其后的帧无法解析。"),
    # -- capture and TCP -------------------------------------------------------------
    "capture_time_went_backwards": (WARNING, "A packet is much older than the ones before it: two captures "
                                    "pasted together, or the clock stepped back.",
                                    "数据包时间明显早于之前的包：可能拼接了两份抓包，或时钟回拨。"),
    "duplicate_connection": (WARNING, "A connection that starts with the same packet as an earlier one: a copy, "
                             "counted once.",
                             "连接的首个数据包与之前的连接完全相同：是重复副本，只统计一次。"),
    "tcp_rst_out_of_window": (WARNING, "A reset far outside its sender's sequence space; the receiver would "
                              "drop it, so it ends nothing.",
                              "复位报文的序列号远在发送方序列空间之外，接收方会丢弃它，连接不因此结束。"),
    # -- SOCKS --------------------------------------------------------------------------
    "socks_tunnel": (INFO, "A SOCKS proxy connected the client to a target; what follows is dissected.",
                     "SOCKS 代理已将客户端连接到目标；其后的内容继续解析。"),
    "socks_request_failed": (WARNING, "The SOCKS proxy refused or failed the client's request.",
                             "SOCKS 代理拒绝或未能完成客户端的请求。"),
    "socks_no_acceptable_method": (WARNING, "The SOCKS proxy accepted none of the client's methods.",
                                   "SOCKS 代理不接受客户端提供的任何认证方式。"),
    "socks_auth_failed": (WARNING, "SOCKS username/password authentication failed.",
                          "SOCKS 用户名/密码认证失败。"),
    "socks_handshake_malformed": (ERROR, "A SOCKS handshake message does not parse.",
                                  "SOCKS 握手报文无法解析。"),
    "socks_handshake_too_long": (WARNING, "More bytes than any SOCKS handshake holds, without one completing.",
                                 "字节数超过任何 SOCKS 握手的长度，且握手未完成。"),
    # -- capture --------------------------------------------------------------------
    "timestamp_outlier": (WARNING, "An event whose timestamp lies far from the rest of the capture "
                                   "(corrupt clock or file); left off the time axis.",
                          "事件的时间戳远离抓包中的其余部分（时钟或文件损坏），未放在时间轴上。"),
    # -- TLS / tshark engine ---------------------------------------------------------
    "tls_undecrypted": (INFO, "A TLS session with no key in the key log: status codes unknown.",
                        "密钥日志中没有该 TLS 会话的密钥，状态码未知。"),
    "tshark_retransmission_dissected_twice": (INFO, "tshark reported the same message twice (retransmission).",
                                              "tshark 对同一报文报告了两次（重传）。"),
    "tshark_websocket_not_dissected": (WARNING, "A 101 to WebSocket whose request is not in the capture: tshark "
                                       "does not decode the frames after it, so the closes are unknown "
                                       "(the native engine reads them).",
                                       "抓包中没有升级请求的 101 WebSocket：tshark 不解析其后的帧，关闭情况未知"
                                       "（原生引擎可以解析）。"),
}

POLICIES: dict[str, Policy] = {name: Policy(*row) for name, row in _TABLE.items()}
NAMES: frozenset[str] = frozenset(POLICIES)
_DEFAULT = Policy(WARNING, "An anomaly this version does not describe.", "本版本未描述的异常。")


def policy(name: str) -> Policy:
    return POLICIES.get(name, _DEFAULT)


def describe(name: str, lang: str = "en") -> str:
    """The description of `name` in `lang` ("en" or "zh"); never fails."""
    p = policy(name)
    return p.zh if lang == "zh" else p.en


def severity(name: str) -> str:
    return policy(name).severity


def sample(name: str, count: int) -> bool:
    """Whether the `count`-th occurrence (1-based) of `name` keeps its example row."""
    p = POLICIES.get(name, _DEFAULT)
    return count <= p.keep_first or count % p.rate == 0
