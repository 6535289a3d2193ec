"""Where the learned rules of a service are kept: one YAML document,
``rules/<service>.learned.yaml`` in the home; with shared records (``records_url``) the shared
store's record of that key, the home keeping a copy (what a job logs to MLflow). ``lock``
serialises a read-modify-write: a file lock beside the file, or the shared store's lock
``rules:<key>``, held across hosts, so hosts learning at once lose nothing."""

from __future__ import annotations

import contextlib
from pathlib import Path

from targets.common.files import file_lock, write_text_atomic
from targets.common.records import Records, records


def learned_key(service: str) -> str:
    """The learned rules of ``service`` as a record: their path under the home."""
    return f"rules/{service}.learned.yaml"


def learned_path(home: Path, service: str) -> Path:
    return home / learned_key(service)


class LearnedDocument:
    """The document at ``path``, or in ``store`` under ``key`` when the store is shared."""

    def __init__(self, path: Path, store: Records | None = None, key: str = "") -> None:
        self.path = path
        self.store = store if store is not None and store.shared else None
        self.key = key or f"rules/{path.name}"

    @classmethod
    def of(cls, home: Path, service: str) -> LearnedDocument:
        return cls(learned_path(home, service), records(home=home), learned_key(service))

    def text(self) -> str | None:
        if self.store is not None:
            data = self.store.read(self.key)
            if data is not None:
                return data.decode("utf-8")
            # not shared yet: what this home learned before its records were shared
        return self.path.read_text(encoding="utf-8") if self.path.exists() else None

    def write(self, text: str) -> None:
        if self.store is not None:
            self.store.write(self.key, text.encode("utf-8"))
        write_text_atomic(self.path, text)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Jobs of one service (on any host) may learn at the same time: one at a time."""
        if self.store is not None:
            return self.store.lock(f"rules:{self.key}")
        return file_lock(self.path.with_suffix(".lock"))
