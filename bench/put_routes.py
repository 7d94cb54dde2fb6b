"""Writes routes /apisix/routes/r<i> for FIRST <= i < END (uri /r/<i>/*,
upstream 127.0.0.1:UPSTREAM_PORT) over one keep-alive connection to the
store's JSON gateway at HOST:PORT: far faster than one etcdctl per route.

    python3 bench/put_routes.py HOST:PORT UPSTREAM_PORT FIRST END
"""
import base64
import http.client
import json
import sys

store, upstream_port, first, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host, port = store.split(":")
conn = http.client.HTTPConnection(host, int(port))


def b64(s):
    return base64.b64encode(s.encode()).decode()


for i in range(first, end):
    route = {"uri": "/r/%d/*" % i, "upstream": {"nodes": {"127.0.0.1:%s" % upstream_port: 1}}}
    body = {"key": b64("/apisix/routes/r%d" % i), "value": b64(json.dumps(route))}
    conn.request("POST", "/v3/kv/put", json.dumps(body))
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        sys.exit("put failed: %d" % r.status)
