# Link, IP and TCP headers: raw frames in, TCP segments out (packets.py),
# with IPv4/IPv6 fragment reassembly (ipfrag.py).
