# STARTTLS with smtplib (any certificate), then a message over TLS.
# python3 starttls.py SERVER
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(sys.argv[1], 25, timeout=30)
print("ehlo:", s.ehlo()[1])
s.starttls(context=ctx)
print("tls:", s.sock.version(), s.sock.getpeercert(binary_form=True) is not None)
print("ehlo in tls:", s.ehlo()[1])
s.sendmail("a@client.test", ["b@server.test"], b"Subject: over TLS\r\nX-Marker: tls\r\n\r\nsecret\r\n")
s.quit()
