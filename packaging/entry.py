"""PyInstaller entry point: the `distilldesk` console script.

freeze_support() must run first: the GUI quantizes in a child process (multiprocessing "spawn"), and in a frozen
app that child re-executes this file; freeze_support() turns it into the worker instead of a second app.
"""
import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    import app.ui.process_job as process_job

    process_job._FREEZE_SUPPORT_OK = True
    from app.cli import main

    sys.exit(main())
