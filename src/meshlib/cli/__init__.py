"""``meshctl``: the command line of the config service."""
