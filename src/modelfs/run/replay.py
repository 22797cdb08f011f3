"""`modelfs run`'s start profile: what the app read at its last start, fetched ahead of it.

Just before the app starts, `run` asks its mount (over the control socket) to replay the
profile of this run (the section's name, or `--profile NAME`) and to record this start; the
mount does both (`daemon.replay`) and answers at once: the app starts while the mount reads
the profile and fetches its ranges, in the order the app will read them. A profile
that is missing, stale or unreadable never stops the app: it is a log line. `--no-profile`
(or `profile = off`) skips all of it.
"""

from __future__ import annotations

import logging

from modelfs.errors import ModelfsError
from modelfs.host import control
from modelfs.run.plan import RunPlan

log = logging.getLogger("modelfs.run")

# The mount answers at once (it reads the profile beside the app); a mount that does not is
# not waited for longer than this.
_ANSWER_TIMEOUT = 10.0


def ask_replay(plan: RunPlan) -> None:
    """Have the mount fetch the start profile ahead of the app, and record this start."""
    if plan.profile is None or plan.target is None:
        return
    message = {
        "cmd": "replay",
        "name": plan.profile,
        "quiet": plan.profile_quiet,
        "max_bytes": plan.profile_max,
    }
    try:
        answer = control.request(plan.target.mountpoint, message, timeout=_ANSWER_TIMEOUT)
    except (OSError, ModelfsError) as exc:
        log.warning("start profile %s: the mount did not answer (%s)", plan.profile, exc)
        return
    if not answer.get("ok"):
        log.warning("start profile %s: %s", plan.profile, answer.get("error"))
        return
    recorded = "; this start is recorded" if answer.get("recording") else ""
    log.info("start profile %s: the mount fetches it ahead of the app%s", plan.profile, recorded)
