# The socks protocol: recognised so that what it carries is dissected.
from analyzer.protocols.spec import Protocol

SPEC = Protocol(
    name="socks",
    module="analyzer.protocols.socks.dissector",
    dissector_name="SocksDissector",
    port_hints=(1080,),
    # A proxy handshake has no status codes of ours; after it, the tunnel's
    # content is detected like any connection's (HTTP, FTP, TLS...).
    event_protocol=False,
)
