# The ftp protocol.
