"""One module at a time, with no gateway: pure functions, stores, property tests."""
