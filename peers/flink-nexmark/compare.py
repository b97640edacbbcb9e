"""Compares an answer file with Spate's reference answers for the same
events, as multisets of lines (the order of lines does not matter).

    python compare.py REFERENCE/qN.csv ANSWERS/qN.csv
Fields are compared unquoted. Prints `identical` or the counts and first lines that differ; exits 1 when
they differ.
"""

import collections
import csv
import sys


def lines(path):
    """The file's lines as CSV rows rejoined with bare commas (Flink quotes
    fields holding a space; Spate's fields never hold a comma)."""
    with open(path, newline="") as file:
        return collections.Counter(",".join(row) for row in csv.reader(file) if row)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    expected, got = lines(sys.argv[1]), lines(sys.argv[2])
    missing = expected - got
    unexpected = got - expected
    if not missing and not unexpected:
        print(f"identical ({sum(expected.values())} lines)")
        return
    for what, diff in (("missing", missing), ("unexpected", unexpected)):
        if diff:
            print(f"{sum(diff.values())} {what} lines, the first: {sorted(diff)[:5]}")
    sys.exit(1)


if __name__ == "__main__":
    main()
