"""Spate's Nexmark queries in Flink SQL, over the events of
`spate nexmark generate` (one CSV file), with event time and watermarks.

Each query writes its answers in the line format of Spate's reference
implementation (DIR/qN.csv), so `compare.py` can check them, and prints one
JSON line with the job's net runtime (from the job's submission to its end,
without the JVM's start-up) and events per second.

Run with the virtual environment that holds `apache-flink`:
    python nexmark_flink.py --events DIR/events.csv --query q5 --out OUT
"""

import argparse
import json
import os
import time

from pyflink.table import EnvironmentSettings, TableEnvironment

COLUMNS = """
    event_type INT, date_time BIGINT,
    person_id BIGINT, person_name STRING, person_email STRING,
    person_credit_card STRING, person_city STRING, person_state STRING,
    auction_id BIGINT, auction_item_name STRING, auction_description STRING,
    auction_initial_bid BIGINT, auction_reserve BIGINT, auction_expires BIGINT,
    auction_seller BIGINT, auction_category BIGINT,
    bid_auction BIGINT, bid_bidder BIGINT, bid_price BIGINT,
    bid_channel STRING, bid_url STRING
"""

# Empty fields (those of the other kinds of event) are nulls. The events
# arrive in event-time order, so the watermark trails the newest
# event by 1 ms (an event at the watermark's time is then never late).
SOURCE = f"""
CREATE TABLE events ({COLUMNS},
    ts AS TO_TIMESTAMP_LTZ(date_time, 3),
    WATERMARK FOR ts AS ts - INTERVAL '0.001' SECOND
) WITH ('connector' = 'filesystem', 'path' = '{{path}}', 'format' = 'csv',
    'csv.null-literal' = '')
"""

VIEWS = [
    """CREATE VIEW person AS SELECT person_id AS id, person_name AS name,
       person_city AS city, person_state AS state, date_time, ts
       FROM events WHERE event_type = 0""",
    """CREATE VIEW auction AS SELECT auction_id AS id, auction_seller AS seller,
       auction_category AS category, auction_expires AS expires, date_time, ts
       FROM events WHERE event_type = 1""",
    """CREATE VIEW bid AS SELECT bid_auction AS auction, bid_bidder AS bidder,
       bid_price AS price, date_time, ts
       FROM events WHERE event_type = 2""",
]

# A window bound as Spate writes it: ms of event time.
MS = "CAST(UNIX_TIMESTAMP(DATE_FORMAT({0}, 'yyyy-MM-dd HH:mm:ss')) * 1000 AS BIGINT)"

# Each query: its answer columns (as the sink table's) and its SELECT.
QUERIES = {
    "q0": (
        "auction BIGINT, bidder BIGINT, price BIGINT, date_time BIGINT",
        "SELECT auction, bidder, price, date_time FROM bid",
    ),
    "q1": (
        "auction BIGINT, bidder BIGINT, price BIGINT, date_time BIGINT",
        "SELECT auction, bidder, CAST(FLOOR(price * 908 / 1000.0) AS BIGINT), date_time FROM bid",
    ),
    "q2": (
        "auction BIGINT, price BIGINT",
        "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0",
    ),
    "q3": (
        "name STRING, city STRING, state STRING, id BIGINT",
        """SELECT P.name, P.city, P.state, A.id
           FROM auction AS A JOIN person AS P ON A.seller = P.id
           WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')""",
    ),
    "q4": (
        "category BIGINT, average BIGINT",
        """SELECT category, AVG(final) FROM (
               SELECT A.id, A.category, MAX(B.price) AS final
               FROM auction AS A JOIN bid AS B ON A.id = B.auction
               WHERE B.date_time BETWEEN A.date_time AND A.expires
               GROUP BY A.id, A.category)
           GROUP BY category""",
    ),
    "q5": (
        "window_start BIGINT, window_end BIGINT, auction BIGINT, num BIGINT",
        f"""SELECT {MS.format('window_start')}, {MS.format('window_end')}, auction, num FROM (
               SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end
                                            ORDER BY num DESC, auction ASC) AS rownum
               FROM (SELECT window_start, window_end, auction, COUNT(*) AS num
                     FROM TABLE(HOP(TABLE bid, DESCRIPTOR(ts),
                                    INTERVAL '2' SECOND, INTERVAL '10' SECOND))
                     GROUP BY window_start, window_end, auction))
           WHERE rownum <= 1 AND window_start >= TO_TIMESTAMP_LTZ(0, 3)""",
    ),
    "q7": (
        "window_start BIGINT, window_end BIGINT, auction BIGINT, bidder BIGINT, "
        "price BIGINT, date_time BIGINT",
        f"""SELECT {MS.format('window_start')}, {MS.format('window_end')},
                   auction, bidder, price, date_time FROM (
               SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end
                         ORDER BY price DESC, auction ASC, bidder ASC, date_time ASC) AS rownum
               FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND)))
           WHERE rownum <= 1""",
    ),
    "q8": (
        "window_start BIGINT, id BIGINT, name STRING",
        f"""SELECT {MS.format('P.window_start')}, P.id, P.name
            FROM (SELECT id, name, window_start, window_end
                  FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(ts), INTERVAL '10' SECOND))) AS P
            JOIN (SELECT seller, window_start, window_end
                  FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(ts), INTERVAL '10' SECOND))
                  GROUP BY seller, window_start, window_end) AS A
            ON P.id = A.seller AND P.window_start = A.window_start
               AND P.window_end = A.window_end""",
    ),
}

# q4's answer is a changelog (each category's average is updated and
# retracted), which a file sink cannot hold: it runs into a blackhole.
CHANGELOG = {"q4"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True, help="events.csv of `spate nexmark generate`")
    parser.add_argument("--query", required=True, choices=sorted(QUERIES))
    parser.add_argument("--out", required=True, help="directory for the answers (qN.csv)")
    parser.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args()

    events_path = os.path.abspath(args.events)
    with open(events_path, "rb") as file:
        events = sum(1 for _ in file)
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", str(args.parallelism))
    config.set("table.local-time-zone", "UTC")
    env.execute_sql(SOURCE.format(path=events_path))
    for view in VIEWS:
        env.execute_sql(view)

    columns, select = QUERIES[args.query]
    staging = os.path.join(os.path.abspath(args.out), f"{args.query}.parts")
    if args.query in CHANGELOG:
        sink = "'connector' = 'blackhole'"
    else:
        sink = f"'connector' = 'filesystem', 'path' = '{staging}', 'format' = 'csv'"
    env.execute_sql(f"CREATE TABLE answers ({columns}) WITH ({sink})")

    started = time.monotonic()
    result = env.execute_sql(f"INSERT INTO answers {select}")
    job = result.get_job_client().get_job_execution_result().result()
    wall = time.monotonic() - started
    net = job.get_net_runtime() / 1000.0

    answers = None
    if args.query not in CHANGELOG:
        answers = gather(staging, os.path.join(args.out, f"{args.query}.csv"))
    print(json.dumps({
        "system": "flink",
        "query": args.query,
        "events": events,
        "parallelism": args.parallelism,
        "net_runtime_s": net,
        "wall_s": wall,
        "events_per_s": events / net,
        "answers": answers,
    }))


def gather(staging, target):
    """Joins the sink's part files into one answer file; returns its lines."""
    lines = 0
    with open(target, "w") as out:
        for root, _, names in os.walk(staging):
            for name in sorted(names):
                if name.startswith(".") or name.endswith(".crc"):
                    continue
                with open(os.path.join(root, name)) as part:
                    for line in part:
                        out.write(line)
                        lines += 1
    return lines


if __name__ == "__main__":
    main()
