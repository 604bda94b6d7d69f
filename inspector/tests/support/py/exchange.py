# A stand-in for an Exchange server's SMTP receive side, for the
# differential tests of XEXCH50 (no Exchange runs here). It reads the way
# Exchange's transport does where it matters (Xexch50SmtpCommand.cs):
# `XEXCH50 <size> <n>` after MAIL and RCPT is answered `354 Send binary
# data`, exactly <size> raw bytes follow (no dot-stuffing, no line end;
# bytes after them are the next command), and the blob is answered
# `250 2.0.0 XEXCH50 OK`. Everything else is strict SMTP: CRLF lines, DATA
# ends at CRLF.CRLF only, BDAT takes `BDAT <digits> [LAST]` and nothing
# else. Each message it accepts is appended to LOG as a JSON line
# {"sender": ..., "rcpts": [...]}: the transactions it executed.
#
#   exchange.py ADDRESS LOG
import json
import re
import socket
import sys
import threading

ADDRESS, LOG = sys.argv[1], sys.argv[2]
lock = threading.Lock()
PATH = re.compile(rb"^(MAIL FROM|RCPT TO):<([^<>\s]*)>( [ -~]*)?$", re.I)


def record(sender, rcpts):
    with lock, open(LOG, "a") as f:
        f.write(json.dumps({"sender": sender, "rcpts": rcpts}) + "\n")


class Conn:
    def __init__(self, sock):
        self.s = sock
        self.buf = b""

    def more(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self.more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def raw(self, n):
        while len(self.buf) < n:
            self.more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def reply(self, text):
        self.s.sendall(text.encode() + b"\r\n")


def serve(sock):
    c = Conn(sock)
    sender, rcpts = None, []
    try:
        c.reply("220 exchange.test Microsoft ESMTP MAIL Service ready")
        while True:
            line = c.line()
            verb = line.split(b" ", 1)[0].upper()
            m = PATH.match(line)
            if verb in (b"EHLO", b"HELO"):
                sender, rcpts = None, []
                c.reply("250-exchange.test Hello\r\n250-PIPELINING\r\n250-CHUNKING\r\n"
                        "250-8BITMIME\r\n250-XEXCH50\r\n250 SIZE")
            elif verb == b"MAIL" and m and m.group(1).upper() == b"MAIL FROM":
                sender, rcpts = m.group(2).decode("latin-1"), []
                c.reply("250 2.1.0 Sender OK")
            elif verb == b"RCPT" and m and m.group(1).upper() == b"RCPT TO" and sender is not None:
                rcpts.append(m.group(2).decode("latin-1"))
                c.reply("250 2.1.5 Recipient OK")
            elif verb == b"XEXCH50":
                args = line.split(b" ")
                if sender is None or not rcpts or len(args) != 3 or not all(
                        a.isdigit() for a in args[1:]) or not 4 < int(args[1]) <= 67108864:
                    c.reply("501 5.5.4 XEXCH50 Invalid command format")
                    continue
                c.reply("354 Send binary data")
                c.raw(int(args[1]))
                c.reply("250 2.0.0 XEXCH50 OK")
            elif verb == b"DATA" and line.upper() == b"DATA":
                if sender is None or not rcpts:
                    c.reply("503 5.5.2 Need rcpt command")
                    continue
                c.reply("354 Start mail input; end with <CRLF>.<CRLF>")
                while c.line() != b".":
                    pass
                record(sender, rcpts)
                sender, rcpts = None, []
                c.reply("250 2.6.0 Queued mail for delivery")
            elif verb == b"BDAT":
                m2 = re.match(rb"^BDAT ([0-9]{1,10})( LAST)?$", line, re.I)
                if not m2 or sender is None or not rcpts:
                    c.reply("501 5.5.4 Invalid arguments")
                    return
                c.raw(int(m2.group(1)))
                if m2.group(2):
                    record(sender, rcpts)
                    sender, rcpts = None, []
                    c.reply("250 2.6.0 Queued mail for delivery")
                else:
                    c.reply("250 2.0.0 %d bytes received" % int(m2.group(1)))
            elif verb == b"RSET":
                sender, rcpts = None, []
                c.reply("250 2.0.0 Resetting")
            elif verb == b"NOOP":
                c.reply("250 2.0.0 OK")
            elif verb == b"QUIT":
                c.reply("221 2.0.0 Service closing transmission channel")
                return
            else:
                c.reply("500 5.3.3 Unrecognized command")
    except (EOFError, OSError):
        pass
    finally:
        sock.close()


listener = socket.socket(socket.AF_INET)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((ADDRESS, 25))
listener.listen(64)
print("listening", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
