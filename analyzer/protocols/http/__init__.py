# The http protocol.
