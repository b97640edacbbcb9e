#!/usr/bin/env python3
"""Prints the Markdown table of a rounds.sh results directory.

  table.py RESULTS

Per round and checkpoint setting: the 1-minute load before each run, each system's input
rate and their ratio, over two spans: the feeder's (first to last input line read: Spate's
printed rate, Flink's progress log) and the whole job's (Spate's elapsed time, Flink's
RUNNING to FINISHED); then the peak RSS summed over each system's processes.
"""
import glob
import json
import os
import re
import sys


def main():
    res = sys.argv[1]
    runs = {}
    for path in glob.glob(os.path.join(res, "r*-*-ck*.json")):
        m = re.match(r"r(\d+)-(flink|spate)-ck(\d+)\.json", os.path.basename(path))
        if m:
            runs[(int(m.group(1)), m.group(2), int(m.group(3)))] = json.load(open(path))
    print("| round | checkpoints | load before Flink / Spate | Flink lines/s (feeder; job) "
          "| Spate lines/s (feeder; job) | Spate / Flink (feeder; job) | peak RSS MiB Flink / Spate |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for (r, system, ck) in sorted(runs):
        if system != "flink" or (r, "spate", ck) not in runs:
            continue
        f, s = runs[(r, "flink", ck)], runs[(r, "spate", ck)]
        head = f"| {r} | {'1 s' if ck else 'off'} | {f['load_before'][0]:.1f} / {s['load_before'][0]:.1f} "
        rss = f"| {f['peak_rss_sum_mib']:,.0f} / {s['peak_rss_sum_mib']:,.0f} |"
        flink_ok = f["state"] == "FINISHED" and f.get("feeder_starts") == 1
        if not flink_ok or s["rc"] != 0 or "input_rate" not in s:
            why = "Flink " + f["state"] if not flink_ok else f"Spate exited {s['rc']}"
            print(head + f"| failed run: {why} | | | " + rss)
            continue
        ff, fj = f["rate_feeder"], f["rate_running_to_finished"]
        sf, sj = s["input_rate"], s["rate_elapsed"]
        print(head + f"| {ff:,.0f}; {fj:,.0f} | {sf:,.0f}; {sj:,.0f} | {sf / ff:.2f}; {sj / fj:.2f} " + rss)


if __name__ == "__main__":
    main()
