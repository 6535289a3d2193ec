"""Recovery: an actuation that knobflow did not finish (killed mid-way) is finished by the next
command on that instance, before it does anything else.

What the log shows decides what is done, always towards a verified config or the recorded one:

=============================  ==================================================================
last phase recorded            what recovery does
=============================  ==================================================================
begin, observed_before         nothing was changed: the actuation ends as failed
applying (no applied)          the change may be half made: roll back to the recorded config
applied, observed_after        finish the verification: observe the windows after anew, decide
decided                        carry out the decision (keep, or roll back and learn)
rolling_back                   roll back again (applying recorded values twice is harmless)
rolled_back, learned           learn (when decided so) and end as rolled back
=============================  ==================================================================

Every recovery writes a ``recovered`` line naming the phase it found, and the ``done`` line says
how it ended ("... (finished by recovery after a crash)").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.actlog import Outcome, Phase
from tasks.actuate import STEPS, Actuation, Steps, decide_and_finish, finish, observe_after
from tasks.observe import Observation

__all__ = ["recover"]

_AFTER_CRASH = " (finished by recovery after a crash)"


def recover(act: Actuation, steps: Steps = STEPS) -> dict[str, Any] | None:
    """Finish the instance's unfinished actuation, if there is one; its ``done`` fields."""
    unfinished = act.log.unfinished()
    if unfinished is None:
        return None
    act.id = str(unfinished.id)
    lines = unfinished.by_phase()
    begin = lines.get(Phase.BEGIN.value, {})
    act.before = dict(begin.get("before_config", {}))
    act.changes = dict(begin.get("changes", {}))
    last = unfinished.phase.value
    act.record(Phase.RECOVERED, found=last, crashed_pid=unfinished.entries[-1].get("pid"),
               action=_action(lines))
    act.say(f"found actuation {act.id} unfinished at '{last}' (knobflow was stopped); "
            "finishing it")
    return _carry_on(act, lines, steps)


def _action(lines: Mapping[str, Mapping[str, Any]]) -> str:
    """What recovery will do, in the log's words: "completed" or "rolled_back"."""
    if Phase.DECIDED.value in lines:
        return "completed" if lines[Phase.DECIDED.value].get("keep") else "rolled_back"
    if Phase.APPLIED.value in lines and Phase.OBSERVED_BEFORE.value in lines:
        return "completed"
    return "rolled_back" if Phase.APPLYING.value in lines else "completed"


def _carry_on(act: Actuation, lines: Mapping[str, Mapping[str, Any]],
              steps: Steps) -> dict[str, Any]:
    phases = set(lines)
    if Phase.DECIDED.value in phases:
        return _carry_out(act, lines, steps)
    if Phase.ROLLING_BACK.value in phases:  # a rollback without a decision: a failed apply
        steps.rollback(act, "interrupted during a rollback")
        return finish(act, Outcome.ROLLED_BACK, "rolled back" + _AFTER_CRASH)
    if Phase.APPLIED.value in phases and Phase.OBSERVED_BEFORE.value in phases:
        before = Observation.from_dict(lines[Phase.OBSERVED_BEFORE.value]["observation"])
        after = observe_after(act, before, steps)
        done = decide_and_finish(act, before, after,
                                 float(lines[Phase.APPLIED.value]["applied_at"]), steps)
        return done
    if Phase.APPLYING.value in phases:
        steps.rollback(act, "interrupted while applying: the change may be half made")
        return finish(act, Outcome.ROLLED_BACK, "interrupted while applying; rolled back to "
                      "the recorded config (no verdict on the config, nothing learned)"
                      + _AFTER_CRASH)
    return finish(act, Outcome.FAILED, "interrupted before anything was changed; the instance "
                  "keeps its config" + _AFTER_CRASH)


def _carry_out(act: Actuation, lines: Mapping[str, Mapping[str, Any]],
               steps: Steps) -> dict[str, Any]:
    """A decision was recorded: keep, or finish the rollback and the learning."""
    decided = lines[Phase.DECIDED.value]
    reason = "; ".join(decided.get("reasons", []))
    if decided.get("keep"):
        return finish(act, Outcome.KEPT, reason + _AFTER_CRASH)
    if Phase.ROLLED_BACK.value not in lines or not lines[Phase.ROLLED_BACK.value].get("ok"):
        steps.rollback(act, reason)
    if decided.get("learn") and Phase.LEARNED.value not in lines:
        steps.learn(act, reason)
    return finish(act, Outcome.ROLLED_BACK, reason + _AFTER_CRASH)
