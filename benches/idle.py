#!/usr/bin/env python3
"""Opens N idle TLS keep-alive connections to 127.0.0.1:PORT (one request each, then idle)
and holds them until terminated. Usage: idle.py PORT N SECONDS_BETWEEN_BATCHES"""
import socket, ssl, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # load generator only; the servers are ours, on loopback
ctx.set_alpn_protocols(["http/1.1"])
conns = []
for i in range(n):
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
        s.sendall(b"GET /assets/s1k.0123abcd.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.recv(65536)
        conns.append(s)
    except OSError:
        break
print(len(conns), flush=True)
while True:
    time.sleep(1)
