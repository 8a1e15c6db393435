"""meshlib: an in-process service mesh for Python."""
