# A client in the middle of a message's DATA: it sends the first half,
# creates READY, waits for GO to exist, sends the rest and prints what it
# then reads (or the error it gets).
# python3 in_data.py SERVER READY GO
import os, sys, time
from to_data import s
ready, go = sys.argv[2], sys.argv[3]
s.sendall(b"Subject: halves\r\n\r\nfirst half\r\n")
open(ready, "w").close()
while not os.path.exists(go): time.sleep(0.05)
rest = b""
try:
    s.sendall(b"second half\r\n.\r\n")
    while True:
        d = s.recv(65536)
        if not d: break
        rest += d
except OSError as e:
    rest += b"<error %s>" % str(e).encode()
print(repr(rest))
