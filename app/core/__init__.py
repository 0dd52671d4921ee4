"""Qt-free services of DistillDesk.  Never imports PySide6."""
