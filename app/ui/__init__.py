"""PySide6 views and QThread workers; talk to app.core only."""
