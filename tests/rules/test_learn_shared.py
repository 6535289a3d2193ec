"""Learned rules with shared records: one document per service in the shared store, every
host's read-modify-write under the store's lock, so hosts learning at once lose nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rules.learn import LearnedRules
from rules.learned_doc import learned_key, learned_path
from rules.ruleset import RuleSet
from targets.common.records import records
from targets.synthetic import SyntheticTarget

SPEC = SyntheticTarget.knob_spec()


def test_two_hosts_learning_at_once_lose_nothing(records_db: dict[str, str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in records_db.items():
        monkeypatch.setenv(key, value)
    service = f"learn-{tmp_path.name}"
    rules = RuleSet.for_target(SyntheticTarget)
    homes = [tmp_path / "host-a", tmp_path / "host-b"]
    errors: list[BaseException] = []

    def learn(home: Path, first: int) -> None:
        store = LearnedRules.of(home, service, SPEC)  # its own database sessions
        try:
            for threads in range(first, first + 10, 2):
                store.add(f"threads == {threads} and compress == true", rules=rules,
                          study=home.name, trial=threads, failure_class="crash", message="x")
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=learn, args=(home, first))
               for home, first in zip(homes, (20, 21), strict=True)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors, errors
    for home in homes:  # every host reads all ten, under ten distinct ids
        docs = LearnedRules.of(home, service, SPEC).documents()
        assert sorted(int(d["when"].split()[2]) for d in docs) == list(range(20, 30))
        assert len({d["id"] for d in docs}) == 10
    shared = records(home=homes[0]).read(learned_key(service))
    assert shared is not None and b"threads == 29" in shared
    # each home keeps a copy of what it last wrote (the file a job logs to MLflow)
    assert learned_path(homes[0], service).is_file()
    # an operator's status change on one host is what the other reads
    LearnedRules.of(homes[1], service, SPEC).set_status("learned-1", "accepted")
    status = {d["id"]: d["status"] for d in LearnedRules.of(homes[0], service, SPEC).documents()}
    assert status["learned-1"] == "accepted"


def test_without_shared_records_the_file_in_the_home_as_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KNOBFLOW_RECORDS_URL", raising=False)
    store = LearnedRules.of(tmp_path, "svc", SPEC)
    assert store.store is None and store.path == tmp_path / "rules" / "svc.learned.yaml"
    store.add("threads == 40 and compress == true", rules=RuleSet.for_target(SyntheticTarget),
              study="s", trial=1, failure_class="crash", message="x")
    assert "threads == 40" in store.path.read_text(encoding="utf-8")
