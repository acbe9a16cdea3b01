"""
Nodes run in-process in tests, as an application runs them: the
Corefile they read (C{COREFILE}, its etcd endpoints, lease and address
given by the test), and one started on a Corefile with settings added.
"""

import os

from twisted.internet import reactor

from idetcd import IdetcdService

COREFILE = """\
.:0 {{
    bind 127.0.0.1
    idetcd {{
        endpoint {endpoints}
        limit 5
        pattern worker{{{{.ID}}}}.tf.local.
        lease {lease}
        address 127.0.0.{address}
    }}
}}
"""


SETTINGS_COREFILE = """\
.:0 {{
    bind 127.0.0.1
    idetcd {{
        endpoint {endpoint}
        pattern worker{{{{.ID}}}}.tf.local.
        limit 5
        lease 3
        address 127.0.0.{address}
{settings}    }}
}}
"""


def start_node(case, endpoint, *settings, address=1):
    """
    Start a node in-process on a Corefile with C{settings} (lines of its
    idetcd block) added; it is stopped when the test ends.
    """
    text = SETTINGS_COREFILE.format(
        endpoint=endpoint,
        address=address,
        settings="".join(f"        {line}\n" for line in settings),
    )
    node = IdetcdService.from_corefile(reactor, text=text, state_dir=os.path.abspath(case.mktemp()))
    node.startService()
    case.addCleanup(lambda: node.stopService() if node.running else None)
    return node
