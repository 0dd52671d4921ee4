"""DistillDesk application: Qt-free services (app.core), PySide6 views (app.ui) and the CLI (app.cli)."""
__version__ = "0.1.0"
