"""The mesh's certificate authority: X.509-SVIDs for workloads, bootstrap tokens."""
