"""
The exit statuses of a node that cannot start, those of C{sysexits.h}, whose
names C{systemctl status} shows (C{status=78/CONFIG}).  Each error an
operator can act on carries its own as the class attribute C{exit_status};
the README's exit status table lists them.
"""

#: Wrong C{twistd idetcd} options.
EXIT_USAGE = 64
#: No name to be had now: every slot taken, no address to announce, etcd
#: not answering or the embedded etcd not starting.
EXIT_UNAVAILABLE = 69
#: An unexpected error, a bug: the log has its traceback.
EXIT_SOFTWARE = 70
#: The state directory cannot be created or written.
EXIT_CANTCREAT = 73
#: Something this node needs is in use by another process: a port, the
#: state directory.
EXIT_TEMPFAIL = 75
#: Not allowed: a port below 1024 without the capability to bind it.
EXIT_NOPERM = 77
#: The Corefile is wrong, the etcd binary is missing, or etcd refused the
#: node's settings (address, version, credentials, certificates).
EXIT_CONFIG = 78

#: Exit statuses a restart cannot cure (the systemd unit's
#: C{RestartPreventExitStatus=}).
PERMANENT = (EXIT_USAGE, EXIT_CANTCREAT, EXIT_NOPERM, EXIT_CONFIG)
