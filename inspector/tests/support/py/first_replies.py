# Opens one connection from each SRC in turn, keeps them all open, and
# prints the first reply line of each as a JSON list.
# python3 first_replies.py SERVER SRC...
import json, socket, sys

from replies import first_line

server = sys.argv[1]
family = socket.AF_INET6 if ":" in server else socket.AF_INET
conns, out = [], []
for src in sys.argv[2:]:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((src, 0))
    s.connect((server, 25))
    out.append(first_line(s))
    conns.append(s)
print(json.dumps(out), flush=True)
