"""``knobflow report`` writes one self-contained HTML page of a job or a live instance: a test
opens it, finds each plot as a decodable PNG in its figure, and finds the page in MLflow."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from targets.live_daemon import stop_launched
from tasks.instances import InstanceStore
from tests.conftest import invoke_cli
from tests.flows.test_live_apply import WINDOWS, start_instance

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = ["--noise-runs", "0", "--set-workload", "duration=0", "--set-workload", "intervals=1",
         "--verify-repeats", "2", "--no-learned-rules"]


class Parsed(HTMLParser):
    """What a report page holds: each figure's PNG and caption, the not-drawn notes, the text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.figures: dict[str, bytes] = {}
        self.captions: dict[str, str] = {}
        self.not_drawn: dict[str, str] = {}
        self.tables: set[str] = set()
        self.text: list[str] = []
        self._in: tuple[str, str] | None = None  # (what, id) being read
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "figure":
            self._in = ("figure", str(found["id"]))
        elif tag == "img" and self._in and self._in[0] == "figure":
            src = str(found["src"])
            assert src.startswith("data:image/png;base64,"), src[:40]
            self.figures[self._in[1]] = base64.b64decode(src.split(",", 1)[1], validate=True)
        elif tag == "figcaption" and self._in:
            self._in = ("caption", self._in[1])
        elif tag == "div" and found.get("class") == "not-drawn":
            self._in = ("not-drawn", str(found["id"]))
        elif tag == "table" and found.get("id"):
            self.tables.add(str(found["id"]))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("figure", "div"):
            self._in = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in and self._in[0] == "caption":
            self.captions[self._in[1]] = self.captions.get(self._in[1], "") + data
        elif self._in and self._in[0] == "not-drawn":
            self.not_drawn[self._in[1]] = self.not_drawn.get(self._in[1], "") + data

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def report(home: Path, *args: str) -> tuple[Parsed, Path, str]:
    """Run ``knobflow report ARGS``: the page parsed, its path and the MLflow run it names."""
    done = invoke_cli(["report", *args, "--home", str(home)])
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    path = Path(lines["report"])
    assert lines["MLflow run"].endswith("(artifact report.html)"), done.stdout
    return Parsed(path.read_text(encoding="utf-8")), path, lines["MLflow run"].split()[0]


def assert_png(page: Parsed, figure: str) -> None:
    picture = page.figures.get(figure, b"")
    assert picture.startswith(PNG) and len(picture) > 2000, (figure, len(picture))
    assert page.captions.get(figure), figure


def logged_page(home: Path, run_id: str) -> str:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert "report.html" in {a.path for a in client.list_artifacts(run_id)}
    return Path(client.download_artifacts(run_id, "report.html", str(home))).read_text("utf-8")


def tune(home: Path, *args: str) -> str:
    """A small synthetic job; the name it prints."""
    done = invoke_cli(["tune", "synthetic", "--home", str(home), *SMALL, *args])
    assert done.returncode == 0, done.stdout + done.stderr
    (name,) = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("job ")]
    return name


@pytest.fixture(scope="module")
def tuned(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A home with one job of 14 trials: enough clean ones (12) for the service's model."""
    home = tmp_path_factory.mktemp("report") / "kf"
    name = tune(home, "--budget", "14", "--seed", "3")
    model = json.loads((home / "jobs" / name / "result.json").read_text())["model"]
    assert model.get("version"), model  # the page reports with the model this job trained
    return home, name


def test_the_job_page_holds_every_plot_and_is_logged_to_the_jobs_run(
        tuned: tuple[Path, str]) -> None:
    home, name = tuned
    page, path, run_id = report(home, name)
    assert path == home / "jobs" / name / "report.html"
    for figure in ("history", "importance", "predicted"):
        assert_png(page, figure)
    assert not page.not_drawn
    assert {"summary", "best-config"} <= page.tables
    words = page.words
    assert f"job {name}" in words and "verified gain" in words and "verdict" in words
    assert "knobflow-synthetic-throughput v1, trained at the end of this job" in \
        page.captions["importance"]
    assert "Spearman rank correlation" in page.captions["predicted"]
    record = json.loads((home / "jobs" / name / "job.json").read_text())
    assert run_id == record["mlflow_run_id"]
    assert logged_page(home, run_id) == path.read_text(encoding="utf-8")


def test_without_a_model_the_importance_is_optunas_and_the_page_says_why(
        tuned: tuple[Path, str], tmp_path: Path) -> None:
    home, _ = tuned
    name = tune(home, "--budget", "6", "--seed", "5", "--no-train", "--service", "other",
                "--instance", "b")
    out = tmp_path / "page.html"
    page, path, _ = report(home, "other-b", "--out", str(out))  # the beginning of its name
    assert path == out
    assert f"job {name}" in page.words
    assert_png(page, "history")
    assert_png(page, "importance")
    assert "Optuna's importance with its PED-ANOVA evaluator" in page.captions["importance"]
    assert "predicted" not in page.figures
    assert "training was turned off" in page.not_drawn["predicted"]


@pytest.fixture
def live(home: Path) -> Iterator[str]:
    instance = start_instance(home, "syn-1")
    yield instance.name
    stop_launched(Path(str(instance.data_dir)))


def test_the_instance_page_shows_actuations_and_drift_on_a_timeline(
        prefect_api: str, home: Path, live: str, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"x": 0.25, "threads": 16}))
    done = invoke_cli(["apply", live, str(good), *WINDOWS, "--home", str(home)])
    assert done.returncode == 0, done.stdout + done.stderr
    drift = InstanceStore(home).dir(live) / "drift.jsonl"
    now = datetime.now(UTC)  # the watch's checks after the actuation
    checks = [((now + timedelta(seconds=s)).isoformat(), status, d, text)
              for s, status, d, text in (
                  (1, "reference", False, "reference recorded"), (5, "compared", False, "no drift"),
                  (65, "compared", True, "read_ratio moved 0.5 -> 0.9 (KS p=0.001)"))]
    drift.write_text("".join(json.dumps({
        "time": t, "status": status, "drifted": d, "summary": s, "event": d,
        "workload": {"read_ratio": 0.9}, "evidence": [
            {"name": "read_ratio", "kind": "ks", "drifted": d}]}) + "\n"
        for t, status, d, s in checks) + "{torn\n")
    page, path, run_id = report(home, live)
    assert path == InstanceStore(home).dir(live) / "report.html"
    assert_png(page, "timeline")
    assert {"summary", "actuations", "drift-events"} <= page.tables
    words = page.words
    assert "kept" in words and "read_ratio moved 0.5 -> 0.9 (KS p=0.001)" in words
    assert "read_ratio (ks)" in words and "line 4 skipped" in words
    assert "3, 1 found drift" in words and "reference recorded" in words
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.run_name == live and run.data.tags["knobflow.report"] == "instance"
    assert client.get_experiment(run.info.experiment_id).name == "knobflow/synthetic/actuations"
    assert logged_page(home, run_id) == path.read_text(encoding="utf-8")
    _, _, again = report(home, live)
    assert again == run_id  # the instance's report run is reused

    unknown = invoke_cli(["report", "nope", "--home", str(home)])
    assert unknown.returncode == 2
    assert "no job or instance 'nope'" in unknown.stderr and "instances: syn-1" in unknown.stderr
