# Clients while the proxy is under stress: KEEP sessions that send NOOP
# every 0.7 s (under the stress timeout) for 12 s keep it loaded; then
# three that go silent after the greeting, one after EHLO, and one in DATA
# that pauses 3 s twice inside its message. Prints a JSON summary: how
# long each silent one lasted and what it got, whether a keeper was closed,
# the DATA client's final reply.
# python3 stress_clients.py SERVER KEEP
import json, socket, sys, threading, time

server, keep = sys.argv[1], int(sys.argv[2])
out = {"keepers_closed": 0, "silent": [], "data": None}
lock = threading.Lock()

def connect():
    s = socket.create_connection((server, 25), timeout=60)
    f = s.makefile("rb")
    return s, f

def reply(f):
    lines = []
    while True:
        line = f.readline()
        if not line:
            return "<closed>"
        lines.append(line.decode(errors="replace").rstrip())
        if line[3:4] != b"-":
            return lines[-1]

def keeper():
    s, f = connect()
    reply(f)
    end = time.time() + 12
    while time.time() < end:
        s.sendall(b"NOOP\r\n")
        if not reply(f).startswith("250"):
            with lock:
                out["keepers_closed"] += 1
            return
        time.sleep(0.7)
    s.sendall(b"QUIT\r\n")
    reply(f)

def silent(ehlo):
    s, f = connect()
    reply(f)
    if ehlo:
        s.sendall(b"EHLO slow.test\r\n")
        reply(f)
    start = time.time()
    got = reply(f)
    with lock:
        out["silent"].append([round(time.time() - start, 2), got])

def data():
    s, f = connect()
    reply(f)
    for cmd in [b"EHLO data.test\r\n", b"MAIL FROM:<a@client.test>\r\n",
                b"RCPT TO:<b@server.test>\r\n", b"DATA\r\n"]:
        s.sendall(cmd)
        reply(f)
    s.sendall(b"Subject: slow under stress\r\n\r\nfirst\r\n")
    time.sleep(3)
    s.sendall(b"second\r\n")
    time.sleep(3)
    s.sendall(b"third\r\n.\r\n")
    out["data"] = reply(f)
    s.sendall(b"QUIT\r\n")

threads = [threading.Thread(target=keeper) for _ in range(keep)]
for t in threads:
    t.start()
time.sleep(1)
more = [threading.Thread(target=silent, args=(False,)) for _ in range(3)]
more += [threading.Thread(target=silent, args=(True,)), threading.Thread(target=data)]
for t in more:
    t.start()
for t in threads + more:
    t.join()
print(json.dumps(out), flush=True)
