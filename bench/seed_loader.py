"""The seed's loader approach, run as a command as the seed's was (start-up and imports timed, as
this project's loader is): pandas reads the export, one SET per row in a pipeline of 10,000.

    REDIS_URL=redis://… python bench/seed_loader.py FILE.csv
"""

import os
import sys

import pandas as pd
import redis


def main(path: str) -> None:
    frame = pd.read_csv(path, dtype=str)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    pipe = client.pipeline(transaction=False)
    for i, row in enumerate(frame.itertuples(index=False), start=1):
        pipe.set(row[0], row[2])
        if i % 10_000 == 0:
            pipe.execute()
    pipe.execute()


if __name__ == "__main__":
    main(sys.argv[1])
