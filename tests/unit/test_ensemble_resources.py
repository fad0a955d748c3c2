"""The plan check: components that could be running together on a worker must fit it; a stage
that starts once the one before has finished does not add to what that one asked for."""

from __future__ import annotations

import pytest

from shoal.core.errors import InputError
from shoal.ensemble.spec import Component
from shoal.server.ensemble_runs import ComponentRun
from shoal.server.ensembles import check_resources
from shoal.server.workers import WorkerState

WORKER = WorkerState(id=1, name="h1", host="h1", cores=4, memory_bytes=8 << 30,
                     connected_at=0.0, last_seen=0.0)


def plan(*parts: tuple[int, int, bool]) -> list[ComponentRun]:
    """(stage, cores, wait) each, all on the one worker of 4 cores."""
    return [ComponentRun(Component(name=f"c{n}", host="h1", command="true", stage=stage,
                                   cores=cores, wait=wait), WORKER)
            for n, (stage, cores, wait) in enumerate(parts)]


@pytest.mark.parametrize(("parts", "starts_after", "fits"), [
    ([(0, 3, True), (1, 3, True)], {}, False),                   # stage 1 joins a running 0
    ([(0, 3, True), (1, 3, True)], {1: "finished"}, True),       # stage 0 has ended by then
    ([(0, 3, False), (1, 3, True)], {1: "finished"}, True),      # "finished" waits for all
    ([(0, 3, True), (1, 3, True), (2, 3, True)], {1: "finished"}, False),  # 1 and 2 overlap
    ([(0, 3, True), (1, 3, True), (2, 3, True)], {1: "finished", 2: "finished"}, True),
    ([(0, 3, True), (2, 3, True)], {2: "finished"}, True),       # stage numbers with gaps
    ([(0, 3, True), (1, 1, True), (2, 3, True)], {2: "finished"}, False),  # 0 still runs at 2
    ([(0, 5, True)], {}, False),
])
def test_what_may_run_together_must_fit(parts: list[tuple[int, int, bool]],
                                        starts_after: dict[int, str], fits: bool) -> None:
    if fits:
        check_resources(plan(*parts), starts_after)
        return
    with pytest.raises(InputError, match=r"components on worker h1 ask for \d+ cores together; "
                                         r"it offers 4"):
        check_resources(plan(*parts), starts_after)
