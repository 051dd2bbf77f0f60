"""klptrace: observe and validate Linux livepatch (un)patch callbacks."""

__version__ = "0.1.0"
