"""Job state in a database (SQLAlchemy Core): SQLite in the output folder by default, or any SQLAlchemy URL
(PostgreSQL) so several clients or a restarted head read the same state. One row per job; every state
change is one transaction on one row, so an update costs the same at 100 rows as at 100,000 (the JSON
job file this replaces was rewritten whole on every change)."""

from __future__ import annotations

import hashlib
import json
import os

import sqlalchemy as sa

PENDING, SUBMITTED, DONE, FAILED = "pending", "submitted", "done", "failed"
STATES = (PENDING, SUBMITTED, DONE, FAILED)
LIST_FIELDS = ("tried", "files")  # stored as JSON text

_metadata = sa.MetaData()
JOBS = sa.Table(
    "zimage_queue_jobs", _metadata,
    sa.Column("batch", sa.String(512), primary_key=True),  # several batches can share one database
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),  # the row's place in the table
    sa.Column("line", sa.Integer),
    sa.Column("graph", sa.String(64), nullable=False),  # hash of the job's graph: a changed row is a new job
    sa.Column("seed", sa.BigInteger),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("tried", sa.Text, nullable=False, default="[]"),
    sa.Column("server", sa.String(512)),
    sa.Column("prompt_id", sa.String(64)),
    sa.Column("submitted", sa.Float),
    sa.Column("done_at", sa.Float),
    sa.Column("seconds", sa.Float),
    sa.Column("files", sa.Text, nullable=False, default="[]"),
    sa.Column("error", sa.Text),
)


def graph_hash(graph: dict) -> str:
    return hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).hexdigest()[:16]


def default_url(out_dir: str) -> str:
    return "sqlite:///" + os.path.abspath(os.path.join(out_dir, "jobs.sqlite"))


def _engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _wal(connection, _record):  # readers never block the writer; a commit is one WAL append
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
    return engine


class JobStore:
    """The jobs of one batch (``batch``: a name; the output folder's absolute path by default)."""

    def __init__(self, url: str, batch: str):
        self.url, self.batch = url, batch
        self.engine = _engine(url)
        _metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @staticmethod
    def _decode(row) -> dict:
        job = dict(row._mapping)
        for field in LIST_FIELDS:
            job[field] = json.loads(job[field] or "[]")
        return job

    def merge(self, entries: list[tuple[str, dict, int | None, int | None]]) -> None:
        """[(job, graph, line, seed)] in table order, in one transaction: a job kept from the last run
        when its graph is the same, otherwise (new or changed) a pending one."""
        with self.engine.begin() as connection:
            known = {r.job: r.graph for r in connection.execute(sa.select(JOBS.c.job, JOBS.c.graph).where(JOBS.c.batch == self.batch))}
            fresh, changed = [], []
            for position, (job, graph, line, seed) in enumerate(entries):
                digest = graph_hash(graph)
                if known.get(job) == digest:
                    continue
                row = dict(batch=self.batch, job=job, position=position, line=line, graph=digest, seed=seed, state=PENDING, attempts=0,
                           tried="[]", server=None, prompt_id=None, submitted=None, done_at=None, seconds=None, files="[]", error=None)
                (changed if job in known else fresh).append(row)
            for row in changed:
                connection.execute(JOBS.delete().where(JOBS.c.batch == self.batch, JOBS.c.job == row["job"]))
            if fresh or changed:
                connection.execute(JOBS.insert(), fresh + changed)

    def update(self, job: str, **fields) -> None:
        """One transaction on one row."""
        values = {k: (json.dumps(v) if k in LIST_FIELDS else v) for k, v in fields.items()}
        with self.engine.begin() as connection:
            found = connection.execute(JOBS.update().where(JOBS.c.batch == self.batch, JOBS.c.job == job).values(**values)).rowcount
        if found != 1:
            raise KeyError(f"job {job!r} is not in batch {self.batch!r} of {self.url}")

    def jobs(self, names: list[str] | None = None) -> list[dict]:
        """The batch's jobs in table order (only ``names`` when given)."""
        query = sa.select(JOBS).where(JOBS.c.batch == self.batch).order_by(JOBS.c.position)
        with self.engine.connect() as connection:
            rows = [self._decode(r) for r in connection.execute(query)]
        if names is not None:
            wanted = set(names)
            rows = [r for r in rows if r["job"] in wanted]
        return rows

    def import_job_file(self, path: str) -> int:
        """A job file (jobs.json) of an earlier version of the client, taken over once; returns how many
        jobs it held. Its finished jobs stay finished, its submitted ones are followed up."""
        with open(path, encoding="utf-8") as handle:
            jobs = json.load(handle).get("jobs", {})
        rows = []
        for position, job in enumerate(jobs.values()):
            rows.append(dict(batch=self.batch, job=job["job"], position=position, line=job.get("line"), graph=job["graph"], seed=job.get("seed"),
                             state=job["state"], attempts=job.get("attempts", 0), tried=json.dumps(job.get("tried", [])),
                             server=job.get("done_on") or job.get("server"),
                             prompt_id=job.get("prompt_id"), submitted=job.get("submitted"), done_at=job.get("done_at"), seconds=job.get("seconds"),
                             files=json.dumps(job.get("files", [])), error=job.get("error")))
        with self.engine.begin() as connection:
            connection.execute(JOBS.delete().where(JOBS.c.batch == self.batch))
            if rows:
                connection.execute(JOBS.insert(), rows)
        return len(rows)
