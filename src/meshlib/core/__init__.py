"""The pure core: decisions from plain data, no I/O, time from an injected clock."""
