"""Provider adapters: one conformance suite over every built-in kind, then each one's own payloads."""
