# One connection from each SRC in turn, each connect given TIMEOUT seconds:
# the first reply line of each, or "timeout" when the handshake never
# completed (its SYNs dropped), goes to RESULT as a JSON list; the connected
# ones are held until RELEASE exists (at most two minutes), then closed.
# python3 at_limit.py SERVER TIMEOUT RESULT RELEASE SRC...
import json, os, socket, sys, time

from replies import first_line

server, timeout, result, release = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
family = socket.AF_INET6 if ":" in server else socket.AF_INET
held, out = [], []
for src in sys.argv[5:]:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(timeout)
    try:
        s.connect((server, 25))
    except (socket.timeout, TimeoutError):
        out.append("timeout")
        s.close()
        continue
    s.settimeout(10)
    out.append(first_line(s))
    held.append(s)
with open(result + ".tmp", "w") as f:
    json.dump(out, f)
os.rename(result + ".tmp", result)
end = time.time() + 120
while not os.path.exists(release) and time.time() < end:
    time.sleep(0.05)
for s in held:
    s.close()
