# The tls protocol.
from analyzer.protocols.spec import Protocol

SPEC = Protocol(
    name="tls",
    module="analyzer.protocols.tls.dissector",
    dissector_name="TlsDissector",
    # Encrypted: recognised so its bytes are not mistaken for another
    # protocol, but it has no status codes of its own.
    event_protocol=False,
)
