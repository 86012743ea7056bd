"""The library's jobs, each one call from a supernet (and data) to a result: what the `ofa` commands run.

This is the top layer: it wires the registry, the data, training-time evaluation and the
specialization pieces together; nothing below imports it, and the CLI only parses options and
prints what these functions return.
"""
