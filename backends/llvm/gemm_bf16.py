"""bfloat16 matrix products: placeholder until the AVX-512 BF16 kernel lands."""
from __future__ import annotations


def native(node) -> bool:
    """Whether ``node`` runs on its bfloat16 operands (else it is widened to float32)."""
    return False
