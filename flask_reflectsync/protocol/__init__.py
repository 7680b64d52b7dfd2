"""Wire messages, signing and server-side handlers (framework-free)."""
