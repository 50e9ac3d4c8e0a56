"""An in-process gateway over a real gRPC channel, loopback upstreams behind it."""
