# The ftp protocol.
from analyzer.protocols.spec import Protocol

SPEC = Protocol(
    name="ftp",
    module="analyzer.protocols.ftp.dissector",
    dissector_name="FtpDissector",
    # A greeting on port 21 is enough; elsewhere detect() wants more proof.
    port_hints=(21,),
    event_protocol=True,
    class_suffix="yz",
    # 6yz is not an error: RFC 2228's 631-633 wrap a reply we cannot read.
    default_errors=("4yz", "5yz"),
)
