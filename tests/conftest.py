"""Test set-up: Triton kernels run in the interpreter on the CPU unless a GPU is asked for."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
