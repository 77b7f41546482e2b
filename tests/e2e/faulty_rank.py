"""``fastdistill`` under torchrun with one rank killed (SIGKILL) on the first attempt only:
``FASTDISTILL_TEST_KILL="RANK:ITERATION"`` kills that rank when it starts that iteration, unless
torchrun has already restarted the job (``TORCHELASTIC_RESTART_COUNT`` > 0). For the tests."""

from __future__ import annotations

import os
import signal
import sys

from fastdistill.cli import main
from fastdistill.distiller import Distiller


def _install() -> None:
    spec = os.environ.get("FASTDISTILL_TEST_KILL")
    if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    rank, iteration = (int(v) for v in spec.split(":"))
    if int(os.environ.get("RANK", "0")) != rank:
        return
    step = Distiller.step

    def killing_step(self: Distiller) -> dict[str, float]:
        if self.iteration == iteration:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self)

    Distiller.step = killing_step


if __name__ == "__main__":
    _install()
    sys.exit(main())
