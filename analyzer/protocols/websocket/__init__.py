# The websocket protocol.
