# A session held open across a change of the daemon (a reload): it reads
# the greeting, sends EHLO, creates READY, waits for GO to exist, then
# sends each remaining argument as a command line and prints each reply
# as a JSON string (or the error it gets).
# python3 held.py SERVER READY GO COMMAND...
import json, os, socket, sys, time
server, ready, go, commands = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
s = socket.create_connection((server, 25), timeout=30)
f = s.makefile("rb")
def reply():
    lines = b""
    while True:
        line = f.readline()
        if not line:
            return lines.decode() or "<closed>"
        lines += line
        if line[3:4] != b"-":
            return lines.decode()
print(json.dumps(reply()), flush=True)
s.sendall(b"EHLO client.test\r\n")
print(json.dumps(reply()), flush=True)
open(ready, "w").close()
while not os.path.exists(go): time.sleep(0.05)
for c in commands:
    try:
        s.sendall(c.encode() + b"\r\n")
        print(json.dumps(reply()), flush=True)
    except OSError as e:
        print(json.dumps("<error %s>" % e), flush=True)
