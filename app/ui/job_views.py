"""Two habits shared by the views that run :class:`~app.ui.workers.Job` s, kept in one place.

* :class:`SingleJobView` -- a view that runs one job at a time (Compare, the eval ladder): its progress bar
  ``self.progress`` is busy until the first report and says "stopped" when cancelled, failures go to the one
  error dialog, ``busyChanged`` tells when work starts and ends, and ``_update_controls()`` is called both times.
* :class:`StopJobsOnClose` -- a dialog whose running jobs (``_running_jobs()``) are cancelled, and their threads
  waited for, when it is closed or rejected (Download, Quantize).

Both are mixins: list them before the Qt base class (``class CompareView(SingleJobView, QWidget)``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .errors import show_error
from .workers import Job


class SingleJobView:
    _job: Job | None = None
    progress: Any  # QProgressBar
    busyChanged: Any  # Signal(bool)

    def _update_controls(self) -> None:
        raise NotImplementedError

    def is_busy(self) -> bool:
        return self._job is not None

    def stop(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def _launch(self, job: Job, *, on_done: Callable[[Any], None], on_progress: Callable[[Any], None],
                busy_text: str) -> None:
        job.progress.connect(on_progress)
        job.done.connect(on_done)
        job.failed.connect(lambda e: show_error(self, e))
        job.cancelled.connect(lambda: self.progress.setFormat("stopped"))
        job.finished.connect(self._job_finished)
        self._job = job.start()
        self.progress.setRange(0, 0)
        self.progress.setFormat(busy_text)
        self._update_controls()
        self.busyChanged.emit(True)

    def _job_finished(self) -> None:
        self._job = None
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self._update_controls()
        self.busyChanged.emit(False)


class StopJobsOnClose:
    def _running_jobs(self) -> Iterable[Job]:
        raise NotImplementedError

    def _stop_jobs(self) -> None:
        for job in list(self._running_jobs()):
            job.cancel()
            job.wait()

    def closeEvent(self, e: Any) -> None:  # noqa: N802 - Qt API
        self._stop_jobs()
        super().closeEvent(e)  # type: ignore[misc]

    def reject(self) -> None:
        self._stop_jobs()
        super().reject()  # type: ignore[misc]
