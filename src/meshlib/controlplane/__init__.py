"""The config service: policy store, watch API, workload registry (``meshctl serve``)."""
