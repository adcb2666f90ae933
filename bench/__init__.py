"""Parley's benchmark: Parley against the floor (the same ASGI server with nothing behind it), same run.

``python -m bench.run`` is the one command; see ``bench/README.md``.
"""
