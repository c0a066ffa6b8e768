"""Stale trials of killed search workers: found on resume, marked failed, defaults re-enqueued.

A worker killed mid-trial (SIGKILL, OOM, power cut) leaves its trial RUNNING forever; Optuna's
heartbeat only exists for database storages and needs every worker to opt in. Instead each trial
records its worker as ``host:pid:start`` (``start`` = the process start time in clock ticks since
boot, so a reused pid is not mistaken for the dead worker). When a study is opened, every RUNNING
trial whose worker ran on this host and is gone is marked FAIL; if it was an enqueued trial (the
official configuration, trial 0), its parameters are enqueued again so the study still holds them.
A RUNNING trial of a worker on another host is left alone (its liveness cannot be checked here).
"""

from __future__ import annotations

import logging

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from oodcache.holder import holder_alive

log = logging.getLogger(__name__)

WORKER_ATTR = "worker"


def recover_stale_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials of dead local workers FAIL; re-enqueue enqueued ones. Returns their
    numbers."""
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        if not isinstance(worker, str) or holder_alive(worker) is not False:
            continue
        try:
            study._storage.set_trial_system_attr(
                t._trial_id, "fail_reason", f"worker {worker} died"
            )
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # another resuming worker got there first
            continue
        fixed = t.system_attrs.get("fixed_params")
        if fixed:
            study.enqueue_trial(dict(fixed), skip_if_exists=False)
        log.warning(
            "study %s: trial %d was left RUNNING by dead worker %s; marked FAIL%s",
            study.study_name,
            t.number,
            worker,
            " and its enqueued parameters queued again" if fixed else "",
        )
        stale.append(t.number)
    return stale
