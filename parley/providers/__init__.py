"""Model providers: the interface, the registry that routes model names, and the adapters."""
