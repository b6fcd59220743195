"""What runs in upstream's processes once patched: the patch table, its wrappers, the settings they read.

Imported by the Ray worker setup hook (``worker``); never imports the driver layer.
"""
