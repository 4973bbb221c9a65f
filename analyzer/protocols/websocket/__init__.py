# The websocket protocol.
from analyzer.protocols.spec import Protocol

SPEC = Protocol(
    name="websocket",
    module="analyzer.protocols.websocket.dissector",
    # Content detection only finds connections whose handshake was not seen
    # (a seen handshake is HTTP's Upgrade); the masking bit tells the roles.
    dissector_name="detected_midstream",
    roles_name="server_direction_from_heads",
    event_protocol=True,
    class_ranges=((0, 999), (1000, 2999), (3000, 3999), (4000, 4999)),
    default_errors=("*",),
    # RFC 6455 7.4.1: 1000 normal, 1001 going away, 1005 a close frame
    # without a status code (Jupyter closes every kernel channel that way).
    # 1006, inferred when no close frame came, is abnormal.
    default_expected=(1000, 1001, 1005),
    normal_codes=frozenset({1000, 1001, 1005}),
)
