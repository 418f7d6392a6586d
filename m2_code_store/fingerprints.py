"""Fingerprints of a generation, four to a bucket: which parts of which buckets hold exactly the barcodes a file puts there.

``--replace`` must count how many of the live data set's barcodes the new file keeps (the shrink
check, and the "added / removed" it reports). Night after night most barcodes stay, so each
generation carries, for each part of each bucket (a bucket's barcodes split four ways by the top
two bits of their hash), how many barcodes it holds and the sum (mod 2**64) of a 64-bit hash of
each (:func:`m2_code_store.bulk.digest64_array`). A part whose count and sum equal the file's
holds the same barcodes (two different sets of barcodes agree with a chance of about 2**-64)
and is counted without asking Redis; only the barcodes of the other parts are looked up in the
live generation. Four parts, not one: a night that changes 1% of 2M barcodes leaves about 26%
of the buckets different but only 7% of their parts, so four times fewer lookups.

Each part also carries the sum of a 64-bit hash of each of its records (barcode and customer
code together). An incremental load skips the buckets where the file leaves exactly the records
the bucket holds (every part the same count, barcode sum and record sum): loading a file again,
as a re-run nightly job does, then writes nothing it need not.

Stored per generation in one string, ``{m2:meta}:fingerprints:{gen}`` (in ``m2:meta``'s hash slot,
so the loader writes it fenced by its lease, on Redis Cluster too): the counts as little-endian
uint32, then the sums, then the record sums as little-endian uint64, one of each per part,
about 2.5 bytes a record. An incremental load marks the buckets it writes to as unknown before it
writes (it cannot know which of its barcodes were new): a generation without fingerprints (or
with those of an older loader, of another size), or a part marked unknown, is simply looked up,
so a missing or stale-marked entry costs time, never a wrong count.

They are used only while ``m2:meta`` vouches for them (loader.fingerprints_vouched): the last load
that wrote the generation said, as it finished, that they are exact, and no load has been into it
since. A loader of the previous release, or a load that died, leaves them unvouched, and they are
not used until a --replace writes new ones. An edit by hand that keeps a bucket's record count
(HLEN is checked before a bucket is skipped) is not noticed: after editing the store by hand,
load with --replace.

Plain functions on numpy arrays; reading and writing the key is the loader's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNKNOWN = np.uint32(0xFFFFFFFF)  # the count of a part whose content is not known
PARTS = 4  # parts a bucket's fingerprints are kept in


def part_of(bucket: np.ndarray, digest: np.ndarray) -> np.ndarray:
    """The part of each barcode (of bucket *bucket*, hash *digest*): the hash's top two bits pick it."""
    return (bucket.astype(np.uint32) * np.uint32(PARTS)) | (digest >> np.uint64(62)).astype(np.uint32)


def _parts_of_buckets(buckets: np.ndarray) -> np.ndarray:
    return (np.asarray(buckets, dtype=np.int64)[:, None] * PARTS + np.arange(PARTS)).ravel()


@dataclass
class Fingerprints:
    counts: np.ndarray  # uint32 per part: barcodes in it, or UNKNOWN
    sums: np.ndarray  # uint64 per part: sum of the barcodes' 64-bit hashes, mod 2**64
    records: np.ndarray  # uint64 per part: sum of the records' (barcode and code) hashes, mod 2**64

    @classmethod
    def of(cls, part: np.ndarray, digest: np.ndarray, records: np.ndarray, buckets: int) -> Fingerprints:
        """The fingerprints of the barcodes whose parts (:func:`part_of`) are *part*, hashes
        *digest* and records' hashes *records* (distinct barcodes: what a generation holds), for a
        generation of *buckets* buckets."""
        fingerprints = cls(np.zeros(buckets * PARTS, dtype=np.uint32), np.zeros(buckets * PARTS, dtype=np.uint64),
                           np.zeros(buckets * PARTS, dtype=np.uint64))
        fingerprints.add(part, digest, records)
        return fingerprints

    def add(self, part: np.ndarray, digest: np.ndarray, records: np.ndarray) -> None:
        """Count in more distinct barcodes (parts *part*, hashes *digest*, records' hashes *records*), none counted yet."""
        self.counts += np.bincount(part, minlength=len(self.counts)).astype(np.uint32)
        np.add.at(self.sums, part, digest)  # uint64 wraps: the sum is mod 2**64 (no sort, no gathered copy)
        np.add.at(self.records, part, records)

    @classmethod
    def unknown(cls, buckets: int) -> Fingerprints:
        return cls(np.full(buckets * PARTS, UNKNOWN, dtype=np.uint32), np.zeros(buckets * PARTS, dtype=np.uint64),
                   np.zeros(buckets * PARTS, dtype=np.uint64))

    def to_bytes(self) -> bytes:
        return self.counts.astype("<u4").tobytes() + self.sums.astype("<u8").tobytes() + self.records.astype("<u8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | None, buckets: int) -> Fingerprints | None:
        """Parse what :meth:`to_bytes` wrote; None when *data* is absent or not for *buckets*
        buckets (an older loader's fingerprints included)."""
        parts = buckets * PARTS
        if data is None or len(data) != 20 * parts:
            return None
        counts = np.frombuffer(data, dtype="<u4", count=parts).astype(np.uint32)
        sums = np.frombuffer(data, dtype="<u8", offset=4 * parts, count=parts).astype(np.uint64)
        records = np.frombuffer(data, dtype="<u8", offset=12 * parts, count=parts).astype(np.uint64)
        return cls(counts, sums, records)

    def same_as(self, other: Fingerprints) -> np.ndarray:
        """Per part, whether both hold the same barcodes (both known, equal count and sum)."""
        return (self.counts == other.counts) & (self.sums == other.sums) & (self.counts != UNKNOWN)

    def buckets_with_the_same_records(self, other: Fingerprints) -> np.ndarray:
        """Per bucket, whether both hold the same records (barcodes and codes) in every part."""
        same = self.same_as(other) & (self.records == other.records)
        return same.reshape(-1, PARTS).all(axis=1)

    def bucket_counts(self) -> np.ndarray:
        """Per bucket, the barcodes it holds (meaningless for a bucket with a part unknown)."""
        return self.counts.reshape(-1, PARTS).astype(np.int64).sum(axis=1)

    def forget(self, buckets: np.ndarray) -> None:
        """Mark *buckets* (indices) as unknown: an incremental load is about to write into them."""
        parts = _parts_of_buckets(buckets)
        self.counts[parts] = UNKNOWN
        self.sums[parts] = 0
        self.records[parts] = 0
