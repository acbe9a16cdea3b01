"""
The events logged under one namespace while a test runs, collected for
the test to read.
"""

from twisted.logger import globalLogPublisher


def logged(case, namespace):
    """
    The events logged under C{namespace} from now to the end of the test.
    """
    events = []

    def observe(event):
        if event.get("log_namespace") == namespace:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return events
