# A legitimate client: sends COUNT messages from SRC, a session each, one
# after another, and never retries; prints a JSON summary with the error
# of every message that was not accepted.
# python3 deliver.py SERVER SRC COUNT
import json, smtplib, sys, time

server, src, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
failed, start = [], time.time()
for i in range(count):
    msg = ("Subject: from %s, %d\r\n\r\nmessage %d from %s\r\n" % (src, i, i, src)).encode()
    try:
        s = smtplib.SMTP(timeout=30, source_address=(src, 0))
        s.connect(server, 25)
        s.sendmail("a@client.test", ["b@server.test"], msg)
        s.quit()
    except Exception as e:  # noqa: BLE001 - every failure is reported
        failed.append("%d: %r" % (i, e))
print(json.dumps({"src": src, "sent": count - len(failed), "failed": failed,
                  "seconds": time.time() - start}), flush=True)
