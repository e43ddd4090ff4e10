"""Op definitions. Importing this package registers every op with the registry."""
from . import core  # noqa: F401
from . import optim  # noqa: F401
