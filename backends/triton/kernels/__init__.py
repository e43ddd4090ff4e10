"""Triton kernels, each with a host wrapper (shape checks, allocation, grid, launch).

Importing a module here defines kernels only: nothing is compiled or launched at import time.
"""
