"""A fake Google Cloud Storage on localhost for the tests: TensorFlow (tf.io.gfile), etils.epath,
TFDS and orbax (tensorstore for arrays, google-cloud-storage for bucket metadata) all talk to it.

* gcp-storage-emulator serves the GCS JSON/XML API over plain HTTP on 127.0.0.1:<free port>.
* tensorstore: TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:<port> (plain HTTP, no proxy needed).
* TensorFlow's GCS filesystem has its endpoints hard-coded
  (https://www.googleapis.com/storage/v1/, .../upload/storage/v1/, storage.googleapis.com),
  so we run a tiny HTTPS "MITM" CONNECT proxy: libcurl inside TF honours HTTPS_PROXY and
  CURL_CA_BUNDLE; the proxy terminates TLS with a cert (signed by a throw-away CA) for
  *.googleapis.com and forwards each request to the emulator, rewriting Host so the
  emulator's resumable-upload Location points straight at http://127.0.0.1:<port>.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gcp_storage_emulator.handlers import objects as _emu_objects
from gcp_storage_emulator.server import create_server

# Emulator bug: uploadType=media with an empty body (TF's CreateDir writes "dir/" markers
# that way) crashes in len(request.data) because empty bodies are parsed as None.
_orig_media_upload = _emu_objects._media_upload


def _media_upload_allow_empty(request, response, storage):
    if request.data is None:
        request._data = b""
    return _orig_media_upload(request, response, storage)


_emu_objects._media_upload = _media_upload_allow_empty

# Emulator gap: downloads carry no x-goog-generation header, which tensorstore (orbax's array
# storage) reads to know which version of an object it has ("Malformed StorageGeneration").
_orig_download = _emu_objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    with contextlib.suppress(Exception):  # A missing object: the original answers 404.
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])
    return _orig_download(request, response, storage, *args, **kwargs)


_emu_objects.download = _download_with_generation

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(d: str) -> tuple[str, str, str]:
    """Returns (ca_pem, server_pem, server_key) made with the openssl CLI (~0.3 s)."""
    os.makedirs(d, exist_ok=True)
    ca, ca_key = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    srv, srv_key, csr = (os.path.join(d, n) for n in ("srv.pem", "srv.key", "srv.csr"))
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=" + ",".join("DNS:" + h for h in GOOGLE_HOSTS) + "\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    def run(*command):
        subprocess.run(command, check=True, capture_output=True)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key,
        "-out", ca, "-days", "2", "-subj", "/CN=fake-gcs-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", srv_key, "-out", csr,
        "-subj", "/CN=www.googleapis.com")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
        "-CAcreateserial", "-out", srv, "-days", "2", "-extfile", ext)
    return ca, srv, srv_key


_HOP = {"host", "connection", "proxy-connection", "keep-alive", "transfer-encoding",
        "content-length"}


class _Forward(BaseHTTPRequestHandler):
    """Handles the decrypted HTTP/1.1 requests of one CONNECT tunnel."""
    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)

    def log_message(self, *a):  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if n == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _fwd(self):
        body = self._read_body()
        deny = os.environ.get("FAKEGCS_DENY")  # "401": GCS refusing an anonymous caller
        if deny:
            msg = json.dumps({"error": {"code": int(deny), "message": "Anonymous caller does not "
                              "have storage.objects.get access to the Google Cloud Storage object."
                              " Permission 'storage.objects.get' denied on resource (or it may not"
                              " exist)."}}).encode()
            self.send_response(int(deny))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        host, port = self.upstream
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        hdrs["Host"] = f"{host}:{port}"
        if body or self.command in ("POST", "PUT", "PATCH"):
            hdrs["Content-Length"] = str(len(body))
        # The emulator lacks GET .../b/<bucket>/storageLayout, which TF >= 2.20 calls
        # (GcsFileSystem::IsBucketHnsEnabled, errors propagated) before renaming a directory.
        layout = re.fullmatch(r"/storage/v1/b/([^/?]+)/storageLayout(\?.*)?", self.path)
        path = f"/storage/v1/b/{layout.group(1)}" if layout else self.path
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            conn.request(self.command, path, body=body or None, headers=hdrs)
            r = conn.getresponse()
            status, reason, rh, data = r.status, r.reason, r.getheaders(), r.read()
            if layout and status == 200:
                data = json.dumps({"kind": "storage#storageLayout", "bucket": layout.group(1),
                                   "location": "US", "locationType": "multi-region",
                                   "hierarchicalNamespace": {"enabled": False}}).encode()
        except Exception as e:  # emulator crashed on this request
            status, reason, rh = 502, "Bad Gateway", [("Content-Type", "text/plain")]
            data = f"fake-gcs proxy: emulator failed: {e!r}".encode()
        finally:
            conn.close()
        self.send_response(status, reason)
        for k, v in rh:
            if k.lower() == "location":
                # keep resumable-upload PUTs on the proxy (curl chunk-encodes them and the
                # emulator ignores Transfer-Encoding when Content-Length is also present)
                v = v.replace(f"http://{host}:{port}", "https://www.googleapis.com")
            if k.lower() not in _HOP | {"server", "date"}:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _fwd


class _Proxy(BaseHTTPRequestHandler):
    ssl_ctx: ssl.SSLContext
    forward_cls: type

    def log_message(self, *a):
        pass

    def do_CONNECT(self):
        self.send_response(200, "Connection established")
        self.end_headers()
        tls = None
        try:
            tls = self.ssl_ctx.wrap_socket(self.connection, server_side=True)
            self.forward_cls(tls, self.client_address, self.server)
        except (ssl.SSLError, OSError):
            pass
        finally:
            if tls is not None:
                tls.close()
        self.close_connection = True


class FakeGcs:
    """Emulator (+bucket) and MITM proxy on free localhost ports; .env() gives env vars."""

    def __init__(self, cert_dir: str, buckets=("test-bucket",)):
        self.port = free_port()
        self.server = create_server("127.0.0.1", self.port, in_memory=True,
                                    default_bucket=buckets[0] if buckets else None)
        self.buckets = buckets
        self.ca, srv, key = make_certs(cert_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(srv, key)
        fwd = type("Fwd", (_Forward,), {"upstream": ("127.0.0.1", self.port)})
        handler = type("Proxy", (_Proxy,), {"ssl_ctx": ctx, "forward_cls": fwd})
        self.proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.proxy.daemon_threads = True
        self.proxy_port = self.proxy.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.server.start()
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        for b in self.buckets[1:]:
            self.create_bucket(b)
        return self

    def stop(self):
        self.proxy.shutdown()
        self.proxy.server_close()
        self.server.stop()

    def create_bucket(self, name: str):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("POST", "/storage/v1/b", body=json.dumps({"name": name}).encode(),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        c.close()
        assert r.status in (200, 409), r.status

    def env(self) -> dict[str, str]:
        proxy = f"http://127.0.0.1:{self.proxy_port}"
        return {
            # --- TensorFlow (tf.io.gfile; also etils.epath, TFDS, orbax metadata) ---
            "HTTPS_PROXY": proxy, "https_proxy": proxy,   # libcurl in TF reads these
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": self.ca,                     # TF's CurlHttpRequest -> CURLOPT_CAINFO
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",  # TF + tensorstore: fixed bearer token
            "NO_GCE_CHECK": "true",                        # TF: never probe the metadata server
            "GCS_STAT_CACHE_MAX_AGE": "0",                 # TF: no stale stat/list caches
            "GCS_READ_CACHE_MAX_SIZE_MB": "0",
            "GCS_RETRY_CONFIG_MAX_RETRIES": "2",           # fail faster than the default 10
            # --- tensorstore (orbax array data) ---
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            # --- python google-cloud-storage / gcsfs, if ever used ---
            "STORAGE_EMULATOR_HOST": self.url,
        }


def _serve_main(argv):
    """Child-process entry: python fakegcs.py CERT_DIR BUCKET... ; prints one JSON line
    with the env vars, then serves until stdin closes (i.e. the parent goes away)."""
    import json
    import sys
    fg = FakeGcs(argv[0], tuple(argv[1:]) or ("test-bucket",)).start()
    print(json.dumps(fg.env()), flush=True)
    sys.stdin.read()
    fg.stop()


@contextlib.contextmanager
def fake_gcs(cert_dir: str, buckets=("test-bucket",), in_process: bool = False):
    """Sets os.environ so TF/epath/TFDS/tensorstore/orbax talk to a fake GCS.

    Default: emulator + proxy run in a *subprocess*. In-process serving can deadlock:
    TF sometimes does GCS HTTP while holding the GIL (e.g. a GFile writer's C++ destructor
    retrying its upload), so an in-process Python server can't answer (61 s curl stalls).
    """
    import json
    import subprocess
    import sys
    proc = fg = None
    if in_process:
        fg = FakeGcs(cert_dir, buckets).start()
        env = fg.env()
    else:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), cert_dir, *buckets],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        env = json.loads(proc.stdout.readline())
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if proc is not None:
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        else:
            fg.stop()


if __name__ == "__main__":
    import sys
    _serve_main(sys.argv[1:])
