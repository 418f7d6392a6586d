"""Per-bucket fingerprints of a generation: which buckets hold exactly the barcodes a file puts there.

``--replace`` must count how many of the live data set's barcodes the new file keeps (the shrink
check, and the "added / removed" it reports). Night after night most buckets hold the same
barcodes, so each generation carries, per bucket, how many barcodes it holds and the sum
(mod 2**64) of a 64-bit hash of each (:func:`m2_code_store.bulk.digest64_array`). A bucket whose
count and sum equal the file's for that bucket holds the same barcodes (two different sets of
barcodes agree with a chance of about 2**-64) and is counted without asking Redis; only the
barcodes of the other buckets are looked up in the live generation.

Stored per generation in one string, ``{m2:meta}:fingerprints:{gen}`` (in ``m2:meta``'s hash slot,
so the loader writes it fenced by its lease, on Redis Cluster too): the counts as little-endian
uint32, then the sums and the record sums as little-endian uint64, one of each per bucket, about
0.7 bytes a record.
An incremental load marks the buckets it writes to as unknown before it writes (it cannot know
which of its barcodes were new): a generation without fingerprints, or a bucket marked unknown,
is simply looked up, so a missing or stale-marked entry costs time, never a wrong count.

Each bucket also carries the sum of a 64-bit hash of each of its records (barcode and customer
code together). An incremental load skips the buckets where the file leaves exactly the records
the bucket holds (same count, same barcode sum, same record sum): loading a file again, as a
re-run nightly job does, then writes nothing it need not. Written by an older loader (12 bytes a
bucket), the record sums are missing, and nothing is skipped.

Plain functions on numpy arrays; reading and writing the key is the loader's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNKNOWN = np.uint32(0xFFFFFFFF)  # the count of a bucket whose content is not known


@dataclass
class Fingerprints:
    counts: np.ndarray  # uint32 per bucket: barcodes in it, or UNKNOWN
    sums: np.ndarray  # uint64 per bucket: sum of the barcodes' 64-bit hashes, mod 2**64
    records: np.ndarray | None = None  # uint64 per bucket: sum of the records' hashes; None: not known

    @classmethod
    def of(cls, bucket: np.ndarray, digest: np.ndarray, buckets: int, records: np.ndarray | None = None) -> Fingerprints:
        """The fingerprints of the barcodes whose buckets are *bucket* and hashes *digest*
        (distinct barcodes: what a generation holds), and their records' hashes *records*."""
        fingerprints = cls(np.zeros(buckets, dtype=np.uint32), np.zeros(buckets, dtype=np.uint64),
                           None if records is None else np.zeros(buckets, dtype=np.uint64))
        fingerprints.add(bucket, digest, records)
        return fingerprints

    def add(self, bucket: np.ndarray, digest: np.ndarray, records: np.ndarray | None = None) -> None:
        """Count in more distinct barcodes (buckets *bucket*, hashes *digest*, their records'
        hashes *records*: required when this keeps record sums), none counted yet."""
        self.counts += np.bincount(bucket, minlength=len(self.counts)).astype(np.uint32)
        np.add.at(self.sums, bucket, digest)  # uint64 wraps: the sum is mod 2**64 (no sort, no gathered copy)
        if self.records is not None:
            if records is None:
                raise ValueError("these fingerprints keep record sums: give the records' hashes")
            np.add.at(self.records, bucket, records)

    @classmethod
    def unknown(cls, buckets: int) -> Fingerprints:
        return cls(np.full(buckets, UNKNOWN, dtype=np.uint32), np.zeros(buckets, dtype=np.uint64),
                   np.zeros(buckets, dtype=np.uint64))

    def to_bytes(self) -> bytes:
        data = self.counts.astype("<u4").tobytes() + self.sums.astype("<u8").tobytes()
        return data if self.records is None else data + self.records.astype("<u8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | None, buckets: int) -> Fingerprints | None:
        """Parse what :meth:`to_bytes` wrote; None when *data* is absent or not for *buckets* buckets."""
        if data is None or len(data) not in (12 * buckets, 20 * buckets):
            return None
        counts = np.frombuffer(data, dtype="<u4", count=buckets).astype(np.uint32)
        sums = np.frombuffer(data, dtype="<u8", offset=4 * buckets, count=buckets).astype(np.uint64)
        records = None
        if len(data) == 20 * buckets:
            records = np.frombuffer(data, dtype="<u8", offset=12 * buckets, count=buckets).astype(np.uint64)
        return cls(counts, sums, records)

    def same_as(self, other: Fingerprints) -> np.ndarray:
        """Per bucket, whether both hold the same barcodes (both known, equal count and sum)."""
        return (self.counts == other.counts) & (self.sums == other.sums) & (self.counts != UNKNOWN)

    def same_records_as(self, other: Fingerprints) -> np.ndarray:
        """Per bucket, whether both hold the same records (barcodes and codes); all False when
        either has no record sums."""
        if self.records is None or other.records is None:
            return np.zeros(len(self.counts), dtype=bool)
        return self.same_as(other) & (self.records == other.records)

    def forget(self, buckets: np.ndarray) -> None:
        """Mark *buckets* (indices) as unknown: an incremental load is about to write into them."""
        self.counts[buckets] = UNKNOWN
        self.sums[buckets] = 0
        if self.records is not None:
            self.records[buckets] = 0
