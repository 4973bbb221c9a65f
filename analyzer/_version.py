# The version, alone in a module so that anything may import it without
# importing analyzer/__init__.py's library entry points (no import cycle).
__version__ = "0.1.0"
