# TCP streams: one direction's reassembly (stream.py) and the connection
# table that owns both directions and hands bytes to the protocols (table.py).
