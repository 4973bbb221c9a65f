# The http protocol.
from analyzer.protocols.spec import Protocol

SPEC = Protocol(
    name="http",
    module="analyzer.protocols.http.dissector",
    dissector_name="HttpDissector",
    # Detected by content on any port; a port never relaxes it.
    port_hints=(),
    event_protocol=True,
    class_suffix="xx",
    default_errors=("4xx", "5xx"),
)
