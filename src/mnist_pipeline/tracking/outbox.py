"""What a training sends its MLflow run, in order, kept on disk while the store is out of reach.

MLflow has no offline mode: when a tracking server dies, every request is retried for minutes
(a killed server stalled a 10 s training for 12 minutes) and then raises, and what it carried
is lost. An `Outbox` sends each record once. On the first failure to reach the store it stops
trying, says so in one line, and appends that record and every later one to
`<run dir>/mlflow-unsent/records.jsonl`; training goes on. A resume of the run sends them
first, or `python src/sync.py` does, in the same order.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_pipeline.atomic import atomic_write_text
from mnist_pipeline.errors import UserError, first_line

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from torch import Tensor, nn

log = logging.getLogger(__name__)
UNSENT_DIR = "mlflow-unsent"
RECORDS = "records.jsonl"
MODEL_FILE = "model.pt"
FILES = "files"  # artifacts from outside the run folder, copied in
# One request to an http(s) server may keep a training waiting at most ~20 s: 3 tries of 5 s
# and 1-2 s between them (MLflow's defaults: 8 tries of 120 s, minutes apart). After one
# failure the outbox asks no more. And no "View run at" lines (one more request each, printed
# twice per run). A user's own setting of these variables wins.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

Record = dict[str, Any]


class TrackingError(UserError):
    """The tracking server or store cannot be used (one line, exit status 2)."""


def bound_http_waits(uri: str) -> None:
    """Cap MLflow's retries of http(s) requests (`HTTP_SETTINGS`) for this process and its
    children (DDP ranks)."""
    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_SETTINGS.items():
            os.environ.setdefault(name, value)


def out_of_reach(error: BaseException) -> bool:
    """Whether `error` says the store could not be reached or failed, so that the same record
    may succeed later; not that it refused the record (a 4xx answer: sending it again fails
    the same way)."""
    from mlflow.exceptions import MlflowException
    from requests import RequestException

    if isinstance(error, MlflowException):
        return error.get_http_status_code() >= 500
    return isinstance(error, (RequestException, ConnectionError, TimeoutError))


class Outbox:
    """The records of MLflow run `run_id` at `uri`: sent while the store answers, else kept in
    `folder` (None: not kept; the error is raised)."""

    def __init__(self, uri: str, folder: Path | None, run_id: str | None = None) -> None:
        self.uri, self.folder, self.run_id = uri, folder, run_id
        self.offline = False

    @property
    def file(self) -> Path | None:
        """The records not sent yet, one JSON object a line after a header line."""
        return self.folder / RECORDS if self.folder else None

    def post(self, client: MlflowClient, record: Record) -> None:
        """Send `record` now, or keep it when the store is (or just went) out of reach."""
        if not self.offline:
            try:
                self._send(client, record)
                return
            except Exception as error:
                self._go_offline(error)
        self._keep(record)

    def replay(self, client: MlflowClient) -> str | None:
        """Send what an earlier process of this run kept, but not its end status, which it
        returns (None: none kept): the run goes on (a resume, an evaluation)."""
        status = None
        for record in self._kept():
            status = record.get("status", status)
        try:
            count = self._send_kept(client, skip_status=True)
        except Exception as error:
            self._go_offline(error)
        else:
            if count:
                log.info("sent the %d MLflow records run %s had kept", count, self.run_id)
        return status

    def _go_offline(self, error: Exception) -> None:
        """From now on keep every record, if `error` says the store is out of reach."""
        if self.folder is None or not out_of_reach(error):
            raise error
        self.offline = True
        log.warning(
            "MLflow store %s is out of reach (%s): training goes on without it; what run %s "
            "is not sent is kept in %s",
            self.uri,
            first_line(error)[:300],
            self.run_id,
            self.file,
        )

    def check_sent(self) -> None:
        """A `TrackingError` if records are still waiting in the folder."""
        if self.file is not None and self.file.is_file():
            count = sum(1 for _ in self._kept())
            raise TrackingError(
                f"MLflow store {self.uri} was out of reach: {count} records of run "
                f"{self.run_id} are kept in {self.file}; once it is back, send them with "
                f"`python src/sync.py {self.folder.parent}` (nothing trained is lost)"
            )

    def _send_kept(self, client: MlflowClient, skip_status: bool = False) -> int:
        """Send the kept records in order, rewriting the file after each, so that none is sent
        twice; the folder is removed once all went. Returns how many were sent."""
        records = list(self._kept())
        for done, record in enumerate(records, 1):
            if not (skip_status and "status" in record):
                self._send(client, record)
            self._rewrite(records[done:])
        return len(records)

    def _send(self, client: MlflowClient, record: Record) -> None:
        from mlflow.entities import Metric, Param, RunTag

        # `log_batch` splits what it is given at the store's limits per request itself.
        if "params" in record:
            params = [Param(key, value) for key, value in record["params"].items()]
            client.log_batch(self.run_id, params=params)
        elif "metrics" in record:
            client.log_batch(self.run_id, metrics=[Metric(*metric) for metric in record["metrics"]])
        elif "tags" in record:
            tags = [RunTag(key, value) for key, value in record["tags"].items()]
            client.log_batch(self.run_id, tags=tags)
        elif "text" in record:
            client.log_text(self.run_id, record["text"], record["file"])
        elif "artifact" in record:  # kept relative to the run directory: it may move
            path = self.folder.parent / record["artifact"] if self.folder else record["artifact"]
            client.log_artifact(self.run_id, str(path), record["dir"])
        elif "model" in record:
            model, example = record["model"], record.get("example")
            if isinstance(model, str):  # kept on disk: see _keep
                model, example = self._kept_model()
            from mnist_pipeline.tracking.models import log_model

            log_model(self.uri, self.run_id, model, example)
        elif "table" in record:
            replace_table(client, self.run_id, record["table"], record["file"])
        elif "datasets" in record:
            from mnist_pipeline.tracking.models import log_datasets

            log_datasets(client, self.run_id, record["datasets"])
        elif "register" in record:
            from mnist_pipeline.tracking.models import register

            register(
                client, self.run_id, record["register"], record["description"], record.get("key")
            )
        elif "status" in record:
            client.set_terminated(self.run_id, record["status"])
        else:
            raise ValueError(f"unknown MLflow record {sorted(record)}")

    def _keep(self, record: Record) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if "model" in record and not isinstance(record["model"], str):
            import torch

            # Tensors and plain data only, never a pickled module: a run folder is read back as
            # data (`_kept_model`), and may have come from anyone.
            kept = {
                "network": record["network"],
                "state_dict": record["model"].network.state_dict(),
                "example": record["example"],
            }
            torch.save(kept, self.folder / MODEL_FILE)
            record = {"model": MODEL_FILE}
        if "artifact" in record:
            # Kept relative to the run folder (it may move), and only files inside it are ever
            # read back (`_kept`): a file from elsewhere is copied in first.
            path, run = Path(record["artifact"]), self.folder.parent
            if not path.resolve().is_relative_to(run.resolve()):
                (self.folder / FILES).mkdir(exist_ok=True)
                path = Path(shutil.copy2(path, self.folder / FILES / path.name))
            record = {**record, "artifact": str(path.relative_to(run))}
        fresh = not self.file.exists()
        with open(self.file, "a", encoding="utf-8") as file:
            if fresh:
                file.write(json.dumps(self._header()) + "\n")
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def _kept(self) -> Iterator[Record]:
        """The kept records, each checked to name only files of its own run folder."""
        if self.file is None or not self.file.is_file():
            return
        lines = self.file.read_text(encoding="utf-8").splitlines()[1:]
        run = self.folder.parent.resolve()
        for number, line in enumerate(lines, 2):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # cut short by a crash while appending: the last one
                log.warning("%s:%d: a record cut short, left out", self.file, number)
                continue
            if not isinstance(record, dict):
                raise UserError(f"{self.file}:{number}: not an MLflow record")
            if "model" in record and record["model"] != MODEL_FILE:
                raise UserError(f"{self.file}:{number}: a kept model must be {MODEL_FILE}")
            if "artifact" in record:
                path = Path(str(record["artifact"]))
                if path.is_absolute() or not (run / path).resolve().is_relative_to(run):
                    raise UserError(
                        f"{self.file}:{number}: artifact {path} lies outside the run folder {run}"
                    )
            yield record

    def _kept_model(self) -> tuple[nn.Module, Tensor]:
        """The model `_keep` wrote: its network rebuilt from the saved config, checked as a
        checkpoint's is (`build_from_file`), and its weights; plus the input example."""
        import torch

        from mnist_pipeline.networks import Probabilities, UntrustedNetworkError, build_from_file

        path = self.folder / MODEL_FILE
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            net = build_from_file(saved["network"], path)
            net.load_state_dict(saved["state_dict"])
            return Probabilities(net).eval(), saved["example"]
        except UntrustedNetworkError as error:
            raise UserError(str(error)) from None
        except Exception as error:  # unreadable, not a dict, weights of another network
            reason = first_line(error)
            raise UserError(f"{path}: not a model kept by this pipeline ({reason})") from None

    def _header(self) -> Record:
        """The first line of the file: the store and run its records belong to."""
        return {"tracking_uri": self.uri, "run_id": self.run_id}

    def _rewrite(self, records: list[Record]) -> None:
        if records:
            lines = [self._header(), *records]
            atomic_write_text(self.file, "".join(json.dumps(r) + "\n" for r in lines))
        else:
            shutil.rmtree(self.folder)


def replace_table(client: MlflowClient, run_id: str, table: Any, path: str) -> None:
    """`client.log_table` of `table` (a DataFrame, or rows: dicts with the same keys), except
    that a table logged before is replaced: MLflow's appends to it, and a table logged again (a
    report of an evaluation run again, a sweep's summary after a rerun) must not repeat its
    rows."""
    import tempfile

    import pandas as pd

    table = pd.DataFrame(table)
    if path not in {a.path for a in client.list_artifacts(run_id, str(Path(path).parent))}:
        client.log_table(run_id, table, path)
        return
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / Path(path).name
        table.to_json(file, orient="split", index=False)  # log_table's format
        client.log_artifact(run_id, str(file), str(Path(path).parent))


def open_kept(folder: Path, tracking_uri: str | None = None) -> Outbox:
    """The outbox of a run folder's kept records (`<run>/mlflow-unsent` or `<run>`); its header
    names the store and run, `tracking_uri` overrides the store (a server that moved)."""
    folder = folder / UNSENT_DIR if (folder / UNSENT_DIR).is_dir() else folder
    try:
        header = json.loads((folder / RECORDS).read_text(encoding="utf-8").splitlines()[0])
        return Outbox(tracking_uri or header["tracking_uri"], folder, header["run_id"])
    except (OSError, IndexError, KeyError, json.JSONDecodeError) as error:
        raise UserError(f"{folder / RECORDS}: no kept MLflow records ({error})") from None


def sync(folder: Path, tracking_uri: str | None = None) -> tuple[int, Outbox]:
    """Send a run's kept records to its MLflow store; (how many were sent, the outbox)."""
    outbox = open_kept(folder, tracking_uri)
    bound_http_waits(outbox.uri)
    from mlflow import MlflowClient

    try:
        return outbox._send_kept(MlflowClient(outbox.uri)), outbox
    except Exception as error:
        if not out_of_reach(error):
            raise
        raise TrackingError(
            f"MLflow store {outbox.uri} is still out of reach ({first_line(error)[:300]}); the "
            f"records of run {outbox.run_id} stay in {outbox.file}"
        ) from None


def find_kept(root: Path) -> list[Path]:
    """The folders of kept records under `root` (outputs/), oldest run first."""
    return sorted(path.parent for path in root.glob(f"**/{UNSENT_DIR}/{RECORDS}"))


def main(argv: list[str] | None = None) -> None:
    """`python src/sync.py [RUN_DIR ...] [--tracking-uri URI]`: send kept MLflow records."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python src/sync.py",
        description="Send the MLflow records that runs kept while their store was out of reach.",
    )
    parser.add_argument(
        "runs", nargs="*", type=Path, help="run output directories (default: all under outputs/)"
    )
    parser.add_argument("--tracking-uri", help="send to this store instead of the run's own")
    args = parser.parse_args(argv)
    from mnist_pipeline import PROJECT_ROOT

    folders = args.runs or find_kept(PROJECT_ROOT / "outputs")
    if not folders:
        print("nothing to send: no run under outputs/ keeps unsent MLflow records")
    for folder in folders:
        count, outbox = sync(folder, args.tracking_uri)
        print(f"sent {count} records of MLflow run {outbox.run_id} to {outbox.uri}")
