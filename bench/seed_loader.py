"""Seed-style reference loaders, run as commands as the seed's was (start-up and imports timed, as
this project's loader is).

    REDIS_URL=redis://… python bench/seed_loader.py FILE.csv            # pandas, one SET per row, pipeline of 10,000
    REDIS_URL=redis://… python bench/seed_loader.py FILE.csv --seed-loop  # the seed's own loop

``--seed-loop`` is the loop of NYPL's original write_csv_to_redis: the rows read with the csv
module (the file counted first), one SET per row under the seed's key prefix, in redis-py's default
pipeline (MULTI/EXEC) executed every 10,000 rows (the batch size its README gives for the full load).
Like the original it also stores the header row, as the key ``m2-barcode-store-by-barcode-Item barcode``.
"""

import csv
import os
import sys

import redis

BATCH = 10_000


def pandas_style(path: str, client: redis.Redis) -> None:
    import pandas as pd

    frame = pd.read_csv(path, dtype=str)
    pipe = client.pipeline(transaction=False)
    for i, row in enumerate(frame.itertuples(index=False), start=1):
        pipe.set(row[0], row[2])
        if i % BATCH == 0:
            pipe.execute()
    pipe.execute()


def seed_loop(path: str, client: redis.Redis) -> None:
    pipe = client.pipeline()
    with open(path, newline="") as in_file:
        length = sum(1 for _ in in_file)
    with open(path, newline="") as in_file:
        for i, (barcode, _date, customer_code, _deleted) in enumerate(csv.reader(in_file, delimiter=",")):
            pipe.set("m2-barcode-store-by-barcode-" + barcode, customer_code)
            if i % BATCH == 0 or i == length - 1:
                print("executing", i)
                pipe.execute()


if __name__ == "__main__":
    loop = seed_loop if "--seed-loop" in sys.argv[2:] else pandas_style
    loop(sys.argv[1], redis.Redis.from_url(os.environ["REDIS_URL"]))
