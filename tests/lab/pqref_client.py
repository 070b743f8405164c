"""Starts the reference PQConnect client (1.2.x) on a kernel without the nftables `queue`
expression.

The reference client queues DNS responses to userspace with an nftables rule
(`udp sport 53 queue num N`); that expression is missing here, so the rule is installed with
the iptables NFQUEUE target instead. Everything else (the nftables table and chain it creates,
the proxy, the client) runs unchanged. Copied into the reference root and run there by
tests/lab/reference.ts; arguments are passed on to `pqconnect`.
"""

import atexit
import subprocess
import sys

from pqconnect.common.util import NftablesError
from pqconnect.nft import NfqueueBuilder

_queues = []


def _rule(queue_num):
    return ["INPUT", "-p", "udp", "--sport", "53",
            "-j", "NFQUEUE", "--queue-num", str(queue_num)]


def _iptables(*args):
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)


def _add_dns_queue_rule(self, table_name, queue_num):
    # Same contract as the method it replaces: raise NftablesError so that
    # build() moves on to the next queue number.
    r = _iptables("-I", *_rule(queue_num))
    if r.returncode != 0:
        raise NftablesError(r.stderr.strip())
    _queues.append(queue_num)


def _remove_rules():
    # Called from the proxy's teardown (a child process) and again at exit of
    # the main one; a rule that is already gone is not an error.
    while _queues:
        q = _queues.pop()
        while _iptables("-D", *_rule(q)).returncode == 0:
            pass


_original_tear_down = NfqueueBuilder.tear_down


def _tear_down(self):
    _remove_rules()
    _original_tear_down(self)


NfqueueBuilder._add_dns_queue_rule = _add_dns_queue_rule
NfqueueBuilder.tear_down = _tear_down
atexit.register(_remove_rules)

if __name__ == "__main__":
    from pqconnect.client import main

    sys.argv[0] = "pqconnect"
    sys.exit(main())
