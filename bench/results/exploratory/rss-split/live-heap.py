"""Sums heaptrack's leaked-bytes stacks (from live-heap.sh) into bytes per connection by
allocation site, showing the innermost frames of ours, hyper's, tokio's and the crates'."""
import re
import sys

KEEP = ("cable_gateway", "hyper", "tokio::", "fastwebsockets", "moka", "sqlx", "hashbrown")


def short(frame):
    frame = re.sub(r"::h[0-9a-f]{16}", "", frame)
    for a, b in (("$LT$", "<"), ("$GT$", ">"), ("$u7b$$u7b$closure$u7d$$u7d$", "{closure}"), ("$C$", ",")):
        frame = frame.replace(a, b)
    return frame.split(" (")[0][-90:]


def main(path, n, top=30):
    rows = []
    for line in open(path):
        stack, _, cost = line.rstrip().rpartition(" ")
        rows.append((int(cost), stack.split(";")))
    rows.sort(key=lambda r: -r[0])
    print(f"live bytes per connection: {sum(c for c, _ in rows) / n:.0f}")
    for cost, stack in rows[:top]:
        frames = [f for f in stack if any(k in f for k in KEEP)]
        print(f"{cost / n:8.0f}  " + " <- ".join(short(f) for f in reversed(frames[-5:])))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
