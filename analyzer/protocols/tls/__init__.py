# The tls protocol.
