"""``data prepare``'s last pass with its progress: tokenize, shuffle and write the parquet parts,
while the driver counts the rows tokenized (a tiny counting actor the encode tasks add to) and the
shards written (their footers, as they appear). Ray Data's writer blocks the driver, so a thread
reads both every ``POLL_S`` and feeds the progress ``Meter``."""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from raydeep.datasets.prepare import lm
from raydeep.datasets.prepare.inputs import Location
from raydeep.progress_bar import Meter

if TYPE_CHECKING:
    from raydeep.datasets.prepare.pipeline import PrepareOptions


class _Count:
    """A count Ray tasks add to and the driver reads: the rows tokenized so far (made an actor with
    ``ray.remote``, so this module imports without Ray)."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def value(self) -> int:
        return self.n


def _counted(batch: dict, *, encode: Callable[..., Iterator[Any]], count: Any, **kwargs: Any) -> Iterator[Any]:
    """Ray task: ``encode``'s tables, each one's rows added to ``count`` (an lm unit's tails aside:
    they are not blocks yet)."""
    import ray  # in a Ray task, already loaded

    for table in encode(batch, **kwargs):
        n = table.num_rows - (pc.sum(pc.ends_with(table.column("split"), lm.TAIL)).as_py() or 0)
        if n:
            ray.get(count.add.remote(n))  # waited for: the driver's last read must see every table
        yield table


class _Shards:
    """The parquet parts Ray Data has finished in ``parts``: a part still being written has no
    footer yet, so it is counted on a later look."""

    def __init__(self, out: Location, parts: str) -> None:
        self.out, self.parts = out, parts
        self.rows: dict[str, int] = {}

    def look(self) -> None:
        fs = self.out.fs
        try:
            fs.invalidate_cache(self.parts)
            found = [p for p in fs.find(self.parts) if p.endswith(".parquet")
                     and not posixpath.basename(posixpath.dirname(p)).endswith(lm.TAIL)]
        except (OSError, ValueError):
            return  # nothing written yet
        for path in found:
            if path not in self.rows:
                try:
                    with fs.open(path, "rb") as f:
                        self.rows[path] = pq.ParquetFile(f).metadata.num_rows
                except Exception:  # noqa: BLE001 - not finished: no footer yet
                    pass

    def text(self) -> str:
        return f"{len(self.rows):,} shards written ({sum(self.rows.values()):,} rows)"


POLL_S = 1.0  # the driver reads the tokenized count and lists the written shards this often


def write_parts(units_ds: Any, encode: Callable[..., Iterator[Any]], kwargs: dict[str, Any], o: PrepareOptions,
                 out: Location, parts: str, *, unit: str, total: int | None) -> None:
    """Tokenize with ``encode``, shuffle (seeded, unless --no-shuffle) and write parquet partitioned by
    the split column, counting rows tokenized and shards written on the driver while Ray Data works."""
    import ray  # deferred with ray.data in prepare()

    count = ray.remote(num_cpus=0)(_Count).remote()
    ds = units_ds.map_batches(_counted, batch_size=1, fn_kwargs={"encode": encode, "count": count, **kwargs})
    if o.shuffle:
        ds = ds.random_shuffle(seed=o.seed)
    shards = _Shards(out, parts)
    done = threading.Event()

    def update(meter: Meter) -> None:
        shards.look()
        meter.extra = shards.text()
        meter.advance(ray.get(count.value.remote()) - meter.completed)

    def watch(meter: Meter) -> None:
        while not done.wait(POLL_S):
            try:
                update(meter)
            except Exception:  # noqa: BLE001 - a missed look only delays the line; the write reports errors
                pass

    try:
        with Meter("tokenizing and writing", unit, total=total) as meter:
            watcher = threading.Thread(target=watch, args=(meter,), daemon=True, name="raydeep-prepare-progress")
            watcher.start()
            try:
                ds.write_parquet(parts, filesystem=out.arrow, partition_cols=["split"],
                                 min_rows_per_file=o.shard_rows, max_rows_per_file=o.shard_rows)
            finally:
                done.set()
                watcher.join()
            update(meter)
    finally:
        ray.kill(count)
