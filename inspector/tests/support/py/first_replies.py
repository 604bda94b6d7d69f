# Opens one connection from each SRC in turn, keeps them all open, and
# prints the first reply line of each as a JSON list.
# python3 first_replies.py SERVER SRC...
import json, socket, sys

server = sys.argv[1]
family = socket.AF_INET6 if ":" in server else socket.AF_INET
conns, out = [], []
for src in sys.argv[2:]:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((src, 0))
    s.connect((server, 25))
    got = b""
    while b"\n" not in got:
        d = s.recv(1000)
        if not d:
            break
        got += d
    out.append(got.split(b"\r\n")[0].decode(errors="replace"))
    conns.append(s)
print(json.dumps(out), flush=True)
