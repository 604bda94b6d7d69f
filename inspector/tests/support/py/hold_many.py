# Opens COUNT sessions from each source address and holds them all open at
# once: each reads its greeting (and, with --ehlo, sends EHLO and reads the
# reply); then prints, per source, how many got 220 (and 250) and the first
# line of each other reply, as one JSON object; then QUIT on each.
# python3 hold_many.py SERVER COUNT SRC [SRC ...] [--ehlo]
import json, socket, sys

args = [a for a in sys.argv[1:] if a != "--ehlo"]
ehlo = "--ehlo" in sys.argv
server, count, sources = args[0], int(args[1]), args[2:]

def reply(f):
    lines = []
    while True:
        line = f.readline()
        if not line:
            return lines or ["(closed)"]
        lines.append(line.decode(errors="replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            return lines

sessions = []
for src in sources:
    for _ in range(count):
        s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET)
        s.settimeout(30)
        s.bind((src, 0))
        s.connect((server, 25))
        sessions.append((src, s, s.makefile("rb")))

out = {src: {"greeted": 0, "ehlo": 0, "other": []} for src in sources}
alive = []
for src, s, f in sessions:
    first = reply(f)[0]
    if first.startswith("220"):
        out[src]["greeted"] += 1
        alive.append((src, s, f))
    else:
        out[src]["other"].append(first)
if ehlo:
    for src, s, f in alive:
        s.sendall(b"EHLO client.test\r\n")
    for src, s, f in alive:
        first = reply(f)[0]
        if first.startswith("250"):
            out[src]["ehlo"] += 1
        else:
            out[src]["other"].append(first)
print(json.dumps(out))
sys.stdout.flush()
for src, s, f in sessions:
    try:
        s.sendall(b"QUIT\r\n")
        reply(f)
    except OSError:
        pass
    s.close()
