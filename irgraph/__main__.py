"""``python -m irgraph``: the irgraph command (frontend/cli); the one application entry point."""
from irgraph.frontend.cli import main

raise SystemExit(main())
