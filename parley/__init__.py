"""Parley: a self-hostable chat backend — streaming chat over WebSocket with persistent sessions."""

__version__ = "0.1.0"
