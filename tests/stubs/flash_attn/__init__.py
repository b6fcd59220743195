"""Test stand-in for the CUDA-only ``flash_attn`` package (see tests/stubs/README.md).

Only the pure-tensor helpers OpenRLHF 0.11.2 imports exist here; there are no attention kernels.
"""

__version__ = "0.0.0+cpu-test-stand-in"
