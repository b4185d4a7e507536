"""An epoch's sample order, and where a rank is in it: pure functions of (seed, epoch, the shards).

A streamed training split is dealt to the ranks here, not by Ray Data's ``streaming_split``
(whose rows go to whichever worker asks first): the epoch's file order
(``reader.epoch_file_order``, from ``(seed, epoch)``) is laid end to end as one row sequence,
cut by the footers' row counts into ``world`` equal runs of ``total // world`` rows, and rank
``r`` reads run ``r`` (``assign_ranges``: a few ``(file, start, stop)`` ranges). The last
``total % world`` rows of the sequence are trimmed, as ``streaming_split(equal=True)`` trims:
which rows depends on the epoch.

Each rank then cuts its own row stream (streamed ranges, or its share of the in-memory
permutation) into **chunks** of ``chunk_rows`` source rows. Chunk ``c`` is resampled (class
``rates``, streamed path) and permuted from ``(seed, epoch, rank, c)`` alone, and batches are cut
from the chunks in order (``EpochOrder``). So a rank's batches are a function of (seed, epoch,
rank, the shards), never of timing or of how its blocks were cut, and its place in them is
``Position``: the chunk it is in and how many of that chunk's samples it took. A resumed rank
skips ``chunk * chunk_rows`` source rows by row counts without reading them
(``skip_rows``), draws chunk ``chunk`` again and drops the ``offset`` samples it had taken:
it continues at the exact next sample.

On another number of workers (an elastic resume), each old rank's remaining samples are
``Piece``s of its order; ``deal_remainder`` lays them end to end and cuts them into equal runs
over the new ranks, and a ``PlannedOrder`` draws each piece as its old rank did. Possible where
a chunk's draw keeps its size (no per-chunk resampling): then sample ``i`` of a rank's order
comes from chunk ``i // chunk_rows``, known by counting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np

from raydeep.datasets.reader import epoch_file_order
from raydeep.datasets.resample import resampled_rows

Arrays = dict[str, np.ndarray]
SAMPLE_ID = "__sample_id"  # asked for by tests (RAYDEEP_SAMPLE_LOG): which sample a row is, logged per rank


@dataclass(frozen=True)
class Range:
    """Rows ``[start, stop)`` of file ``file`` (an index into the split's file list)."""

    file: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def assign_ranges(rows: Sequence[int], seed: int | None, epoch: int, world: int) -> tuple[list[list[Range]], int]:
    """(each rank's ranges in reading order, rows trimmed) for one epoch: the files in the epoch's
    order, end to end, cut into ``world`` equal runs (module doc). Pure."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    total = int(sum(rows))
    per = total // world
    ranks: list[list[Range]] = [[] for _ in range(world)]
    pos, end = 0, per * world
    for f in epoch_file_order(len(rows), seed, epoch):
        a, n = 0, int(rows[f])
        while a < n and pos < end:
            r = pos // per
            take = min(n - a, (r + 1) * per - pos)
            ranks[r].append(Range(f, a, a + take))
            a, pos = a + take, pos + take
    return ranks, total - end


def _drop(spans: Sequence[Any], n: int) -> list[Any]:
    """``spans`` (frozen dataclasses with ``start``/``stop``) without their first ``n`` items."""
    out = []
    for s in spans:
        if n >= s.stop - s.start:
            n -= s.stop - s.start
            continue
        out.append(replace(s, start=s.start + n))
        n = 0
    return out


def skip_rows(ranges: Sequence[Range], n: int) -> list[Range]:
    """``ranges`` without their first ``n`` rows (by count: nothing is read)."""
    return _drop(ranges, n)


@dataclass(frozen=True)
class Position:
    """Where a rank is in an epoch's sample order: ``chunk`` (chunks before it are done),
    ``offset`` (samples of that chunk taken), and for the record the samples and batches taken."""

    epoch: int
    chunk: int = 0
    offset: int = 0
    samples: int = 0
    batches: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _rows(arrays: Arrays) -> int:
    return len(next(iter(arrays.values()))) if arrays else 0


def _concat(parts: list[Arrays]) -> Arrays:
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _slice(arrays: Arrays, a: int, b: int | None = None) -> Arrays:
    return {k: v[a:b] for k, v in arrays.items()}


def chunks(blocks: Iterator[Arrays], chunk_rows: int) -> Iterator[Arrays]:
    """The stream of ``blocks`` re-cut into chunks of exactly ``chunk_rows`` rows (the last shorter)."""
    waiting: list[Arrays] = []
    held = 0
    for block in blocks:
        n = _rows(block)
        if not n:
            continue
        waiting.append(block)
        held += n
        while held >= chunk_rows:
            joined = _concat(waiting)
            yield _slice(joined, 0, chunk_rows)
            held -= chunk_rows
            waiting = [_slice(joined, chunk_rows)] if held else []
    if held:
        yield _concat(waiting)


class EpochOrder:
    """One rank's batches of one epoch from its source rows, and its ``position`` in them.

    ``key``: ``(seed, epoch, rank)``; chunk ``c`` draws from ``(*key, c)``. ``shuffle``: permute each
    chunk; ``rates``: resample each chunk's rows by class first (needs ``label``). ``start``:
    a saved ``Position`` (the source must then begin at its chunk: ``skip_rows``); ``position`` may
    also be set before ``batches`` is called.
    """

    def __init__(self, *, batch_size: int, chunk_rows: int, key: Sequence[int], shuffle: bool = True,
                 rates: Sequence[float] | None = None, label: str = "label", start: Position | None = None,
                 source_rows: int | None = None) -> None:
        if batch_size < 1 or chunk_rows < 1:
            raise ValueError(f"batch_size and chunk_rows must be >= 1, got {batch_size}, {chunk_rows}")
        self.batch_size, self.chunk_rows, self.key = batch_size, chunk_rows, [int(k) for k in key]
        self.shuffle, self.rates, self.label = shuffle, rates, label
        self.position = start or Position(epoch=int(key[1]) if len(key) > 1 else 0)
        self.source_rows = source_rows  # the rank's rows this epoch (before resampling), for the record

    def left(self) -> list[Piece] | None:
        """This rank's remaining samples as ``Piece``s of its own order (what an elastic resume deals),
        or None where a chunk's draw is resampled: its size is unknown until it is read."""
        if self.rates is not None or self.source_rows is None or len(self.key) < 3:
            return None
        p = self.position
        return [Piece(self.key[2], p.chunk * self.chunk_rows + p.offset, self.source_rows)]

    def draw(self, chunk: Arrays, c: int) -> Arrays:
        """Chunk ``c``'s samples in order: resampled, then permuted, from ``(*key, c)``."""
        if not self.shuffle and self.rates is None:
            return chunk
        rng = np.random.default_rng([*self.key, c])
        index = np.arange(_rows(chunk))
        if self.rates is not None:
            index = resampled_rows(chunk[self.label], self.rates, rng)
        if self.shuffle:
            index = index[rng.permutation(len(index))]
        return {k: v[index] for k, v in chunk.items()}

    def batches(self, blocks: Iterator[Arrays]) -> Iterator[Arrays]:
        """Batches of ``batch_size`` (the last shorter); ``position`` counts each one before it is
        yielded, so between batches it is where the next sample comes from."""
        p = self.position
        queue: list[list[Any]] = []  # [chunk, offset of its first pending sample, pending samples]
        pending = 0
        c = p.chunk
        for chunk in chunks(blocks, self.chunk_rows):
            drawn = self.draw(chunk, c)
            skip = p.offset if c == p.chunk else 0  # a resumed rank's samples already taken
            if _rows(drawn) > skip:
                queue.append([c, skip, _slice(drawn, skip)])
                pending += _rows(drawn) - skip
            c += 1
            while pending >= self.batch_size:
                pending -= self.batch_size
                yield self._take(queue, self.batch_size, c)
        while pending:
            n = min(pending, self.batch_size)
            pending -= n
            yield self._take(queue, n, c)

    def _take(self, queue: list[list[Any]], n: int, next_chunk: int) -> Arrays:
        parts = []
        while n:
            c, offset, rows = queue[0]
            k = min(n, _rows(rows))
            parts.append(_slice(rows, 0, k))
            n -= k
            if k == _rows(rows):
                queue.pop(0)
            else:
                queue[0] = [c, offset + k, _slice(rows, k)]
        batch = _concat(parts)
        p = self.position
        chunk, offset = (queue[0][0], queue[0][1]) if queue else (next_chunk, 0)
        self.position = Position(p.epoch, chunk, offset, p.samples + _rows(batch), p.batches + 1)
        return batch


# --- elastic resume: an epoch's remaining samples dealt over another number of workers ----------


@dataclass(frozen=True)
class Piece:
    """Samples ``[start, stop)`` of rank ``rank``'s order of an epoch, as the epoch was first dealt
    (``EpochOrder`` of ``(seed, epoch, rank)`` over that rank's source rows, in the world the epoch
    began with). Without per-chunk resampling a rank's order holds exactly its source rows, so
    sample ``i`` is drawn from chunk ``i // chunk_rows`` and its place is known by counting."""

    rank: int
    start: int
    stop: int

    @property
    def samples(self) -> int:
        return self.stop - self.start


def remaining(pieces: Sequence[Piece], taken: int) -> list[Piece]:
    """``pieces`` without their first ``taken`` samples."""
    return _drop(pieces, taken)


def deal_remainder(left: Sequence[Sequence[Piece]], world: int) -> tuple[list[list[Piece]], int]:
    """(each new rank's pieces, samples trimmed): every old rank's remaining pieces (``left``, in old
    rank order) laid end to end and cut into ``world`` equal runs; the last ``total % world``
    samples are trimmed, as an epoch's first deal trims its rows. Pure: a function of the
    checkpoint alone, so every new rank computes the same deal."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    flat = [p for pieces in left for p in pieces if p.samples > 0]
    total = sum(p.samples for p in flat)
    per = total // world
    ranks: list[list[Piece]] = [[] for _ in range(world)]
    pos = 0
    for p in flat:
        a = p.start
        while a < p.stop and pos < per * world:
            r = pos // per
            take = min(p.stop - a, (r + 1) * per - pos)
            ranks[r].append(Piece(p.rank, a, a + take))
            a, pos = a + take, pos + take
    return ranks, total - per * world


class PlannedOrder:
    """One rank's batches of an epoch resumed on another number of workers: its ``pieces`` of the
    old ranks' orders (``deal_remainder``), each drawn exactly as its old rank drew it (chunks of
    ``chunk_rows`` permuted from ``(seed, epoch, old rank, chunk)``), taken in order and cut into
    batches. ``world``: the number of ranks the epoch was first dealt to (the pieces' ranks are
    theirs). ``source(old_rank, skip)``: that old rank's source rows of the epoch from row ``skip``
    on, as blocks. ``taken`` counts the samples yielded; ``left()`` is what a checkpoint saves."""

    def __init__(self, *, pieces: Sequence[Piece], batch_size: int, chunk_rows: int, seed: int, epoch: int,
                 shuffle: bool, world: int, start: Position | None = None) -> None:
        self.pieces, self.batch_size, self.chunk_rows, self.world = list(pieces), batch_size, chunk_rows, world
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.position = start or Position(epoch=epoch)
        self.taken = 0
        self.source_rows = sum(p.samples for p in self.pieces) + self.position.samples  # the epoch's, for the record

    def left(self) -> list[Piece]:
        return remaining(self.pieces, self.taken)

    def samples(self, source) -> Iterator[Arrays]:
        """The pieces' samples, in order, as runs of up to ``chunk_rows``."""
        c = self.chunk_rows
        for p in self.pieces:
            first = p.start // c
            order = EpochOrder(batch_size=c, chunk_rows=c, key=(self.seed, self.epoch, p.rank), shuffle=self.shuffle,
                               start=Position(self.epoch, first, p.start % c))
            need = p.samples
            blocks = source(p.rank, first * c)
            try:
                for run in order.batches(blocks):
                    k = min(need, _rows(run))
                    yield _slice(run, 0, k)
                    need -= k
                    if not need:
                        break
            finally:
                close = getattr(blocks, "close", None)
                close and close()
            if need:
                raise ValueError(f"old rank {p.rank}'s order ended {need} sample(s) before {p.stop}: "
                                 "the data changed since the checkpoint")

    def batches(self, runs: Iterator[Arrays]) -> Iterator[Arrays]:
        """``runs`` re-cut into batches of ``batch_size`` (the last shorter), counted before each is yielded."""
        waiting: list[Arrays] = []
        held = 0
        for run in runs:
            waiting.append(run)
            held += _rows(run)
            while held >= self.batch_size:
                joined = _concat(waiting)
                yield self._count(_slice(joined, 0, self.batch_size))
                held -= self.batch_size
                waiting = [_slice(joined, self.batch_size)] if held else []
        if held:
            yield self._count(_concat(waiting))

    def _count(self, batch: Arrays) -> Arrays:
        n, p = _rows(batch), self.position
        self.taken += n
        self.position = Position(p.epoch, 0, 0, p.samples + n, p.batches + 1)
        return batch
