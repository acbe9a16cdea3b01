"""
Nodes embedded in-process in tests, as an application runs them: the
Corefile they read, its etcd endpoints, lease and address given by the test.
"""

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
