"""Op definitions. Importing this package registers every op with the registry."""
from . import core  # noqa: F401
from . import conv, norm, pool  # noqa: F401  (convolution, batch norm, pooling: chapter 9)
from . import optim  # noqa: F401
from . import recurrence  # noqa: F401
from . import debug, fused  # noqa: F401  (check_finite and fused regions: passes/)
