"""An agent that starts one escape variant (``VARIANT MARKER``) and then becomes the mock
agent (``exec``): the escaper is the agent's child, with the agent's tags unless the variant
clears them.  Standard library only."""

from __future__ import annotations

import os
import subprocess
import sys

_HOP = (
    "import os, random, signal, time\n"
    "IGN = {ign}\n"
    "EACH = {each}\n"
    "if IGN: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "os.setsid()\n"
    "while True:\n"
    "    time.sleep(random.uniform(0.002, 0.005))\n"
    "    if os.fork():\n"
    "        os._exit(0)\n"
    "    if EACH: os.setsid()\n"
)
_SLEEP = "import time\nwhile True: time.sleep(3600)\n"
_DAEMON = (
    "import os, time\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    "os.setsid()\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    "while True: time.sleep(3600)\n"
)
_MIGRATE = (
    "import os, sys, time\n"
    "with open(os.environ['ACPX_ATTACK_CGROUP'] + '/cgroup.procs', 'w') as fh:\n"
    "    fh.write(str(os.getpid()))\n"
    "os.setsid()\n"
    "while True: time.sleep(3600)\n"
)
#: the same, after re-``exec``ing itself with an owner tag naming itself (its pid and start
#: ticks survive ``exec``): a live "owner" that is the launch itself
_MIGRATE_SELF_OWNER = (
    "import os, sys\n"
    "st = open('/proc/self/stat', 'rb').read()\n"
    "ticks = int(st[st.rfind(b')') + 1:].split()[19])\n"
    "env = dict(os.environ, OPENCLAW_ACPX_OWNER='%d:%d:0.000' % (os.getpid(), ticks))\n"
    "os.execve(sys.executable, [sys.executable, '-c', {migrate!r}, *sys.argv[1:]], env)\n"
)
#: tags kept, a session of its own, then the main thread ends (``pthread_exit``) while another
#: runs on: the process reads as a zombie (state Z, no command line, no environment through
#: its leader) and is alive
_LEADER_EXIT = (
    "import ctypes, os, threading, time\n"
    "os.setsid()\n"
    "threading.Thread(target=time.sleep, args=(3600,)).start()\n"
    "ctypes.CDLL(None).pthread_exit(None)\n"
)
VARIANTS = ("hopper", "hopper-ignterm", "hopper-setsid-each", "setsid-envclear",
            "daemon-emptyenv", "migrate-out", "migrate-out-self-owner", "leader-exit")


def start(variant: str, marker: str) -> None:
    kw: dict[str, object] = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    py = sys.executable
    if variant == "hopper":
        subprocess.Popen([py, "-c", _HOP.format(ign=False, each=False), marker], **kw)
    elif variant == "hopper-ignterm":
        subprocess.Popen([py, "-c", _HOP.format(ign=True, each=False), marker], **kw)
    elif variant == "hopper-setsid-each":
        subprocess.Popen([py, "-c", _HOP.format(ign=False, each=True), marker], **kw)
    elif variant == "setsid-envclear":
        subprocess.Popen([py, "-c", _SLEEP, marker], env={}, start_new_session=True, **kw)
    elif variant == "migrate-out":  # leaves its leaf cgroup for $ACPX_ATTACK_CGROUP, tags kept
        subprocess.Popen([py, "-c", _MIGRATE, marker], **kw)
    elif variant == "migrate-out-self-owner":
        subprocess.Popen([py, "-c", _MIGRATE_SELF_OWNER.format(migrate=_MIGRATE), marker], **kw)
    elif variant == "leader-exit":
        subprocess.Popen([py, "-c", _LEADER_EXIT, marker], **kw)
    elif variant == "daemon-emptyenv":
        subprocess.Popen([py, "-c", _DAEMON, marker], env={}, **kw)
    else:
        raise SystemExit(f"unknown variant {variant}")


if __name__ == "__main__":
    start(sys.argv[1], sys.argv[2])
    if len(sys.argv) > 3:  # let the escaper settle (setsid, first hops) before answering
        import time
        time.sleep(float(sys.argv[3]))
    if sys.argv[4:] == ["--no-exec"]:  # a terminal command: start the escaper, then exit
        raise SystemExit(0)
    os.execv(sys.executable, [sys.executable, "-m", "acpx_trio.testing.mock_agent",
                              *sys.argv[4:]])
