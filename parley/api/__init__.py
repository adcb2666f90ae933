"""HTTP and WebSocket routes: thin — parse, call the store or the connection, shape the answer."""
