"""Compares an answer file with Spate's reference answers for the same
events, as multisets of lines (the order of lines does not matter).

    python compare.py REFERENCE/qN.csv ANSWERS/qN.csv
Prints `identical` or the counts and first lines that differ; exits 1 when
they differ.
"""

import collections
import sys


def lines(path):
    with open(path) as file:
        return collections.Counter(line.rstrip("\n") for line in file if line.strip())


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
