"""Starting and stopping `logitfuse serve` for the tests and the load benchmark: the server picks a
free port (serve.port=0) and says which in its log; SIGTERM stops it, and it must exit 0."""
import contextlib
import re
import signal
import subprocess
import threading
import time


class Server:
    def __init__(self, binary, config, *overrides):
        self.proc = subprocess.Popen([str(binary), "serve", str(config), "serve.port=0", *map(str, overrides)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log = []
        self.url = None
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.log.append(line)
                m = re.search(r"listening on (http://[0-9.]+:\d+)", line)
                if m:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not ready.wait(120) or self.url is None:
            self.proc.kill()
            raise AssertionError("serve did not start:\n" + "".join(self.log))

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self, timeout=120):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.reader.join(5)
        return rc


@contextlib.contextmanager
def serving(binary, config, *overrides):
    server = Server(binary, config, *overrides)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            rc = server.stop()
            assert rc == 0, f"serve exited {rc}:\n" + "".join(server.log[-30:])


def wait_until(predicate, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False
